"""Images and labelled folders as people bring them: 16-bit scans, phone photos, Excel CSVs, rare classes."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from labeler.cli import _holdout, main
from labeler.config import Settings
from labeler.errors import DatasetError, SettingsError
from labeler.learning.datasets import read_labels, synthetic_digits
from labeler.media.images import decode, open_checked


def encode(im: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def test_sixteen_bit_and_float_images_keep_their_picture():
    eight = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)  # the same picture, 16 bits a pixel
    assert sixteen.mode.startswith("I")
    got = np.asarray(decode(encode(sixteen)))
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - eight).max() <= 1, "not clipped to white"
    unit = Image.fromarray(eight.astype(np.float32) / 255, "F")  # float TIFF in [0, 1]
    assert np.abs(np.asarray(decode(encode(unit, "TIFF"))).astype(int) - eight).max() <= 1
    # what the model sees, as RGB, is the 8-bit picture too (it was near-white before)
    assert abs(np.asarray(decode(encode(sixteen)).convert("RGB")).mean() - eight.mean()) < 1


def test_twelve_bit_data_keeps_its_contrast_and_big_images_keep_what_the_models_need():
    from labeler.media.images import kept_size

    twelve = Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16))  # a 12-bit camera
    got = np.asarray(decode(encode(twelve)))
    assert got.min() == 0 and got.max() == 255, "not made black by a 16-bit scale"
    assert kept_size(24, 24) == (24, 24)
    w, h = kept_size(6000, 4000)
    assert w * h <= 1.01 * 512 * 512 and abs(w / h - 1.5) < 0.01
    assert decode(encode(Image.new("RGB", (2000, 500)), "JPEG")).size == (1024, 256), "a panorama keeps its rows"


def test_a_big_sixteen_bit_scan_decodes_in_bounded_memory():
    """A 78 KB PNG can hold a 40 M pixel 16-bit picture: decoding it must not take float64 copies (25 bytes
    a pixel, 1 GB) per request."""
    import tracemalloc

    side = 3000
    ramp = np.tile(np.linspace(0, 65535, side, dtype=np.float64).astype(np.uint16), (side, 1))
    data = encode(Image.fromarray(ramp))
    tracemalloc.start()
    try:
        got = decode(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 6 * side * side, f"{peak / side**2:.1f} bytes a pixel"  # the array of the 32-bit pixels: 4
    row = np.asarray(got, dtype=float)[0]
    assert got.size == (512, 512) and abs(row[0]) <= 1 and abs(row[-1] - 255) <= 1, "the picture is kept"
    assert np.all(np.diff(row) >= 0)


def test_exif_orientation_and_transparency_are_applied_as_a_viewer_shows_them():
    upright = Image.new("L", (10, 20), 0)
    upright.paste(255, (0, 0, 10, 5))  # white top band
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # stored sideways, tag 6 says "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 6
    shown = decode(encode(stored, "PNG", exif=exif.tobytes()))
    assert shown.size == upright.size
    assert np.abs(np.asarray(shown, dtype=int) - np.asarray(upright, dtype=int)).mean() < 2
    assert open_checked(encode(stored, "PNG", exif=exif.tobytes())).size == stored.size  # as stored: export

    clear_red = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode(encode(clear_red)).getpixel((0, 0)) == (255, 255, 255)
    assert decode(encode(Image.new("LA", (4, 4), (0, 0)))).getpixel((0, 0)) == 255


def write_folder(tmp_path: Path, rows: list[tuple[str, str]], bom: bool = False) -> Path:
    for i, colour in enumerate((30, 220)):
        Image.new("L", (8, 8), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(encode(Image.new("L", (64, 64), 9))[:60])
    path = tmp_path / "labels.csv"
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "note"])
        w.writerows([(img, lab, "x, y") for img, lab in rows])
    return path


def test_labelled_folder_reads_excel_csvs_and_skips_bad_images_naming_them(tmp_path):
    path = write_folder(tmp_path, [("0.png", "open "), ("1.png", "closed"), ("broken.png", "open"),
                                   ("gone.png", "closed"), ("0.png", "open")], bom=True)
    data = read_labels(path)
    assert data.classes == ["open", "closed"] and data.labels == ["open", "closed", "open"]
    assert len(data.images()) == 3 and data.images()[0].mode == "L"
    assert sorted(p.name for p, _ in data.skipped) == ["broken.png", "gone.png"]

    unlabelled = write_folder(tmp_path, [("0.png", "open"), ("1.png", "")])
    with pytest.raises(DatasetError, match="line 3: no label"):
        read_labels(unlabelled)
    nothing = write_folder(tmp_path, [("gone.png", "open")])
    with pytest.raises(DatasetError, match="no image listed .* can be read"):
        read_labels(nothing)


def test_simulate_names_classes_too_small_and_holds_out_every_class(tmp_path):
    path = write_folder(tmp_path, [("0.png", "open"), ("1.png", "closed"), ("0.png", "open"), ("0.png", "open")])
    r = CliRunner().invoke(main, ["simulate", "--labels", str(path), "--budget", "1", "--holdout", "1"])
    assert r.exit_code == 1 and "'closed' (1)" in r.output and "2 images or more" in r.output

    y = np.array([0] * 95 + [1] * 5)
    for seed in range(5):
        test = _holdout(y, 20, seed)
        assert len(test) == 20 and np.bincount(y[test]).min() >= 1, "the rare class is evaluated too"
    assert len(set(_holdout(y, 20, 0)) & set(_holdout(y, 20, 1))) < 20, "each seed holds out other images"
    three = np.array([0] * 50 + [1] * 45 + [2] * 5)
    for size in (3, 5):  # rounding alone would leave the rare class out of so small a hold-out
        assert np.bincount(three[_holdout(three, size, 0)], minlength=3).min() >= 1


def test_min_per_class_below_two_is_refused():
    with pytest.raises(SettingsError, match="LABELER_MIN_PER_CLASS"):
        Settings.from_env({"LABELER_MIN_PER_CLASS": "1"})


def test_a_head_model_saved_by_simulate_evaluates_with_its_prompts(tmp_path, tiny_model, monkeypatch):
    labels = synthetic_digits(tmp_path / "digits", [16, 16], size=24, seed=1)
    model = tmp_path / "model"
    r = CliRunner().invoke(main, ["simulate", "--labels", str(labels), "--classifier", "head", "--zeroshot-model",
                                  str(tiny_model), "--budget", "16", "--batch", "8", "--holdout", "10",
                                  "--self-train", "0", "--out", str(tmp_path / "sim"), "--save-model", str(model)])
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("LABELER_ZEROSHOT_MODEL", str(tiny_model))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(main, ["evaluate", "--model", str(model), "--labels", str(labels),
                                  "--model-dir", str(tmp_path / "md")])
    assert r.exit_code == 0, r.output
    assert "32 images" in r.output and "accuracy" in r.output
