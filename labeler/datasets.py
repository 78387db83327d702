"""Labelled image folders: a CSV with ``image,label`` columns, paths relative to the CSV's folder."""

from __future__ import annotations

import csv
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

    def targets(self, classes: list[str]) -> np.ndarray:
        return np.array([classes.index(lab) for lab in self.labels], dtype=int)

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
