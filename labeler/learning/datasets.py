"""Labelled image folders: a CSV with ``image,label`` columns, paths relative to the CSV's folder."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class LabelledFolder:
    paths: list[Path]
    labels: list[str]

    @property
    def classes(self) -> list[str]:
        """Class names in order of first appearance (stable for a given CSV)."""
        return list(dict.fromkeys(self.labels))

    def targets(self, classes: Sequence[str]) -> np.ndarray:
        order = list(classes)
        return np.array([order.index(lab) for lab in self.labels], dtype=int)

    def images(self) -> list[Image.Image]:
        out = []
        for p in self.paths:
            with Image.open(p) as im:
                im.load()
                out.append(im.copy())
        return out


def read_labels(csv_path: str | Path, images_dir: str | Path | None = None) -> LabelledFolder:
    """Read ``image,label`` rows; image paths resolve against ``images_dir`` or the CSV's folder."""
    csv_path = Path(csv_path)
    base = Path(images_dir) if images_dir else csv_path.parent
    paths, labels = [], []
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} must have 'image' and 'label' columns, has {reader.fieldnames}")
        for row in reader:
            p = Path(row["image"])
            if not p.is_absolute():
                p = base / p
                if not p.exists() and images_dir and (csv_path.parent / row["image"]).exists():
                    p = csv_path.parent / row["image"]
            paths.append(p)
            labels.append(row["label"])
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {csv_path} do not exist, e.g. {missing[0]}")
    return LabelledFolder(paths, labels)


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
