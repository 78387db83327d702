"""Synthetic multi-label images: each shows a random subset of five shapes (scaffolding for tests and benchmarks).

Shape ``k`` stands for class ``k`` of a five-class multi-label config (``templates/multilabel.xml``);
an image may show none of them. Positions and colours jitter, so no two images are the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RATES = (0.5, 0.45, 0.4, 0.35, 0.125)  # the last class is rare


def _draw(d: ImageDraw.ImageDraw, k: int, dx: int, dy: int, colour: tuple[int, int, int]) -> None:
    boxes = [(4, 4, 28, 28), (36, 4, 60, 28), (4, 44, 60, 50)]
    if k == 0:
        d.ellipse(tuple(v + (dx if i % 2 == 0 else dy) for i, v in enumerate(boxes[0])), fill=colour)
    elif k in (1, 2):
        d.rectangle(tuple(v + (dx if i % 2 == 0 else dy) for i, v in enumerate(boxes[k])), fill=colour)
    elif k == 3:
        d.polygon([(4 + dx, 60 + dy), (16 + dx, 36 + dy), (28 + dx, 60 + dy)], fill=colour)
    else:
        d.line((36 + dx, 36 + dy, 60 + dx, 60 + dy), fill=colour, width=5)


def synthetic_shapes(out: Path, n: int, seed: int = 0, rates: tuple[float, ...] = RATES) -> dict[str, np.ndarray]:
    """Write ``n`` 64x64 PNGs named ``ml<i>_<bits>.png`` (bit k: shape k shown); returns {name: 0/1 row}."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    base = [(230, 60, 60), (60, 230, 60), (60, 60, 230), (230, 230, 60), (250, 250, 250)]
    truth = {}
    for i in range(n):
        present = (rng.random(len(rates)) < rates).astype(int)
        im = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 50, 3)))
        d = ImageDraw.Draw(im)
        for k in np.flatnonzero(present):
            dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
            r, g, b = (int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in base[k])
            _draw(d, int(k), dx, dy, (r, g, b))
        name = f"ml{i:03d}_{''.join(str(b) for b in present)}.png"
        im.save(out / name)
        truth[name] = present
    return truth


def labels_of(name: str, classes: list[str]) -> tuple[str, ...]:
    """The classes a file name written by :func:`synthetic_shapes` says the image shows (URL prefixes allowed)."""
    bits = name.rsplit("_", 1)[-1].split(".")[0]
    return tuple(c for c, b in zip(classes, bits) if b == "1")
