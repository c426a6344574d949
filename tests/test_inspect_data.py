"""scripts/inspect_data.py: split sizes, classes, exact statistics, unreadable files, throughput, grid."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"a_black": (0, 0, 0), "b_white": (255, 255, 255), "c_red": (255, 0, 0), "e_blue": (0, 0, 255)}


def load_script():
    spec = importlib.util.spec_from_file_location("inspect_data_script", ROOT / "scripts" / "inspect_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    """Four flat 8x8 PNGs of known colours and, between them, a truncated JPEG."""
    root = tmp_path / "colours"
    root.mkdir()
    for name, colour in COLOURS.items():
        Image.new("RGB", (8, 8), colour).save(root / f"{name}.png")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (root / "d_truncated.jpg").write_bytes(buffer.getvalue()[:100])
    return root


def test_report_on_an_image_folder(colour_folder, tmp_path, capsys):
    cfg = compose_config(
        "inspect_data",
        tmp_path,
        [
            "data=image_folder",
            f"data.root={colour_folder}",
            "data.resolution=8",  # the images' own size: no resampling, so the statistics are exact
            "data.val_fraction=0",
            "data.batch_size=2",
            "data.num_workers=0",
            "throughput_batches=3",
        ],
    )
    report = load_script().inspect_data(cfg)
    assert (report["train"], report["val"], report["num_classes"]) == (5, 0, None)
    probe = report["train_probe"]
    assert probe["checked"] == 5 and probe["unreadable"] == 1 and "d_truncated.jpg" in probe["unreadable_examples"][0]
    # Black, white, red and blue in [-1, 1]: R = (-1, 1, 1, -1), G = (-1, 1, -1, -1), B = (-1, 1, -1, 1).
    stats = probe["stats"]
    np.testing.assert_allclose(stats["mean"], [0.0, -0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats["std"], [1.0, math.sqrt(0.75), 1.0], atol=1e-12)
    assert stats["min"] == [-1.0] * 3 and stats["max"] == [1.0] * 3
    assert report["throughput"]["images"] == 6 and report["throughput"]["images_per_s"] > 0
    # The grid: 4 readable 8x8 images, 2 per row, 2-pixel padding, enlarged 16x.
    grid = Image.open(report["grid_path"])
    assert grid.size == ((2 * (8 + 2) + 2) * 16,) * 2 and Path(report["grid_path"]).parent == Path(cfg.paths.output_dir)
    colours = {
        tuple(int(v) for v in grid.getpixel(((2 + c * 10 + 4) * 16, (2 + r * 10 + 4) * 16)))
        for r in (0, 1)
        for c in (0, 1)
    }
    assert colours == set(COLOURS.values())
    out = capsys.readouterr().out
    assert "5 train, 0 validation" in out and "1 unreadable" in out and "d_truncated.jpg" in out
    assert "would be skipped (data.on_corrupt=skip)" in out and "images/s" in out and str(grid.filename) in out


def test_report_counts_classes_and_samples_a_subset(fmnist_root, tmp_path, capsys):
    from spectral_diffusion.data.fashion_mnist import read_idx

    cfg = compose_config(
        "inspect_data",
        tmp_path,
        [f"data.root={fmnist_root}", "data.download=false", "num_images=16", "throughput_batches=1", "grid_size=9"],
    )
    report = load_script().inspect_data(cfg)
    labels = read_idx(fmnist_root / "train-labels-idx1-ubyte.gz")
    assert report["num_classes"] == 10 and report["class_counts"] == np.bincount(labels, minlength=10).tolist()
    assert report["train_probe"]["checked"] == report["val_probe"]["checked"] == 16
    assert report["train_probe"]["unreadable"] == 0 and Image.open(report["grid_path"]).size[0] > 0
    assert "10 classes; training images per class: T-shirt/top=" in capsys.readouterr().out


def test_probe_reads_entries_as_stored_without_flips_or_replacement(colour_folder):
    from spectral_diffusion.data import ImageFolderDataModule

    dm = ImageFolderDataModule(str(colour_folder), resolution=8, val_fraction=0, random_flip=True, num_workers=0)
    dm.setup("fit")
    script = load_script()
    probe = script.Probe(dm.train_set, np.arange(5), (3, 8, 8))
    image, label, message = probe[3]  # d_truncated.jpg: reported, not replaced by e_blue
    assert label == -1 and "d_truncated.jpg" in message and not image.any()
    assert probe[0][2] == "" and torch.equal(probe[0][0], torch.full((3, 8, 8), -1.0))
    assert dm.train_set.random_flip  # the probe flips nothing, and leaves the training set as it was
    picked = script.sample_indices(100, 4, seed=0).tolist()
    assert len(set(picked)) == 4 and picked == script.sample_indices(100, 4, seed=0).tolist()
    assert picked != script.sample_indices(100, 4, seed=1).tolist()
    assert sorted(script.sample_indices(10, None, seed=0).tolist()) == list(range(10))
    with pytest.raises(ValueError, match="num_images=0 must be a positive integer"):
        script.sample_indices(10, 0, seed=0)


def test_report_on_a_data_set_smaller_than_the_batch(fmnist_root, tmp_path, capsys):
    """64 training images, data.batch_size=100: training could not make one batch; inspecting still works."""
    cfg = compose_config(
        "inspect_data",
        tmp_path,
        [f"data.root={fmnist_root}", "data.download=false", "data.batch_size=100", "throughput_batches=2"],
    )
    report = load_script().inspect_data(cfg)
    assert (report["train"], report["val"]) == (64, 32)
    assert report["train_probe"]["checked"] == 64 and report["train_probe"]["stats"] is not None
    throughput = report["throughput"]
    assert throughput["batch_size"] == 64 and throughput["whole_set"] and throughput["images"] == 2 * 64
    assert throughput["images_per_s"] > 0 and Path(report["grid_path"]).is_file()
    out = capsys.readouterr().out
    assert "training loader: batch 64, the whole training set: it is smaller than data.batch_size=100" in out
    assert "training with data.batch_size=100 would stop" in out and "use data.batch_size<=64" in out
