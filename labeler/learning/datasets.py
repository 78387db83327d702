"""Labelled image folders: a CSV with ``image,label`` columns, paths relative to the CSV's folder."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from labeler.errors import DatasetError, ImageError
from labeler.media.images import decode

log = logging.getLogger(__name__)


@dataclass
class LabelledFolder:
    """The readable rows of a labelled folder; ``skipped`` lists the others (path, reason)."""

    paths: list[Path]
    labels: list[str]
    names: list[str] = field(default_factory=list)  # each image as the CSV names it
    loaded: list[Image.Image] = field(default_factory=list, repr=False)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Class names in order of first appearance (stable for a given CSV)."""
        return list(dict.fromkeys(self.labels))

    def targets(self, classes: Sequence[str]) -> np.ndarray:
        order = list(classes)
        return np.array([order.index(lab) for lab in self.labels], dtype=int)

    def images(self) -> list[Image.Image]:
        """The pictures, as the backend decodes them (:func:`labeler.media.images.decode`)."""
        return self.loaded


def read_labels(csv_path: str | Path, images_dir: str | Path | None = None, progress: bool = True) -> LabelledFolder:
    """Read ``image,label`` rows and their images; paths resolve against ``images_dir`` or the CSV's folder.

    A row without a label is an error naming its line (it would otherwise become a class of its own);
    labels are stripped (``"open "`` is ``open``). A missing or undecodable image is skipped with a
    warning naming it, as the backend skips one bad task: the rest of the folder is still used.
    """
    csv_path = Path(csv_path)
    rows = _rows(csv_path, Path(images_dir) if images_dir else None)
    data = LabelledFolder([], [])
    for p, label, name in tqdm(rows, desc="reading images", unit="img", disable=not progress or len(rows) < 500):
        try:
            im = decode(p.read_bytes())
        except (OSError, ImageError) as exc:
            data.skipped.append((p, str(exc)))
            continue
        data.paths.append(p)
        data.labels.append(label)
        data.names.append(name)
        data.loaded.append(im)
    if data.skipped:
        p, why = data.skipped[0]
        log.warning("%d of the %d images listed in %s cannot be read and are left out, e.g. %s: %s",
                    len(data.skipped), len(rows), csv_path, p, why)
    if not data.paths:
        raise DatasetError(f"no image listed in {csv_path} can be read"
                           + (f", e.g. {data.skipped[0][0]}: {data.skipped[0][1]}" if data.skipped else ""))
    return data


def _rows(csv_path: Path, images_dir: Path | None) -> list[tuple[Path, str, str]]:
    base = images_dir or csv_path.parent
    rows = []
    with csv_path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{csv_path} must have 'image' and 'label' columns, has {reader.fieldnames}")
        for row in reader:
            label, image = (row.get("label") or "").strip(), (row.get("image") or "").strip()
            if not label or not image:
                raise DatasetError(f"{csv_path} line {reader.line_num}: no {'label' if image else 'image'} "
                                   f"(every row needs both; remove unlabelled rows)")
            p = Path(image)
            if not p.is_absolute():
                p = base / p
                if not p.exists() and images_dir and (csv_path.parent / image).exists():
                    p = csv_path.parent / image
            rows.append((p, label, image))
    return rows


def synthetic_digits(out: str | Path, counts: list[int], size: int = 32, seed: int = 0) -> Path:
    """A labelled folder of generated images with ``len(counts)`` classes (class ``c`` has ``counts[c]``).

    Class ``c`` is the digit ``c`` (then letters past 9) drawn in PIL's built-in
    font at a random offset, scale and grey level, with pixel noise: a small
    many-class set for tests and demos that needs no download. Unequal
    ``counts`` give rare classes. Returns the ``labels.csv`` path.
    """
    from PIL import ImageDraw, ImageFont

    glyphs = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if not 2 <= len(counts) <= len(glyphs):
        raise ValueError(f"between 2 and {len(glyphs)} classes, got {len(counts)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default()
    rows = []
    for c, n in enumerate(counts):
        for i in range(n):
            small = Image.new("L", (12, 14), int(rng.integers(0, 60)))
            ImageDraw.Draw(small).text((int(rng.integers(0, 4)), int(rng.integers(0, 3))), glyphs[c],
                                       fill=int(rng.integers(180, 256)), font=font)
            scale = rng.uniform(0.6, 0.9)
            glyph = small.resize((int(size * scale), int(size * scale)), Image.Resampling.BILINEAR)
            im = Image.new("L", (size, size), int(rng.integers(0, 60)))
            im.paste(glyph, (int(rng.integers(0, size - glyph.width + 1)), int(rng.integers(0, size - glyph.height + 1))))
            arr = np.clip(np.asarray(im, dtype=np.float32) + rng.normal(0, 12, (size, size)), 0, 255)
            name = f"images/c{c:02d}_{i:04d}.png"
            Image.fromarray(arr.astype(np.uint8)).convert("RGB").save(out / name)
            rows.append((name, f"class{c}"))
    order = rng.permutation(len(rows))  # classes interleaved, as a real folder would be
    with (out / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows(rows[i] for i in order)
    return out / "labels.csv"
