"""The Fashion-MNIST DataModule: IDX parsing, where it looks for files, and what batches hold."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from spectral_diffusion.data import DataNotFoundError, FashionMNISTDataModule, fashion_mnist
from spectral_diffusion.data.fashion_mnist import locate_fashion_mnist, read_idx

from .conftest import write_idx


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    # Uncompressed files too.
    (tmp_path / "b").write_bytes(gzip.decompress((tmp_path / "a.gz").read_bytes()))
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), array)


def test_truncated_idx_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(ValueError, match=f"{path}.*header says shape"):
        read_idx(path)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


def test_batches_are_padded_scaled_and_labelled(fmnist_root):
    dm = FashionMNISTDataModule(root=str(fmnist_root), download=False, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    assert images.min() == -1.0 and images.max() <= 1.0
    # The 2-pixel border is padding with the background value.
    assert (images[:, :, :2] == -1).all() and (images[:, :, :, -2:] == -1).all()
    # Pixel values map 0 -> -1 and 200 -> 200/127.5 - 1.
    assert torch.isclose(images.max(), torch.tensor(200 / 127.5 - 1))
    assert len(dm.train_set) == 64 and len(dm.val_set) == 32
    assert dm.image_shape == (1, 32, 32)


def test_torchvision_layout_is_found(tmp_path, fmnist_root):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in fmnist_root.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    assert locate_fashion_mnist(tmp_path, download=False, download_dir=None) == raw


def test_missing_root_says_where_it_looked_and_how_to_get_data(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        locate_fashion_mnist(tmp_path / "nowhere", download=False, download_dir=None)
    text = str(err.value)
    assert str(tmp_path / "nowhere") in text and "FashionMNIST/raw" in text
    assert "apt-get install dataset-fashion-mnist" in text


def test_nothing_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(DataNotFoundError) as err:
        locate_fashion_mnist(None, download=False, download_dir=tmp_path / "data")
    text = str(err.value)
    assert str(tmp_path / "debian") in text and str(tmp_path / "data" / "FashionMNIST" / "raw") in text
    assert "download disabled" in text


def test_debian_location_is_used_without_root(tmp_path, monkeypatch, fmnist_root):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", fmnist_root)
    assert locate_fashion_mnist(None, download=False, download_dir=tmp_path) == fmnist_root


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_real_debian_fashion_mnist():
    dm = FashionMNISTDataModule(download=False, batch_size=16)
    dm.setup("fit")
    assert len(dm.train_set) == 60000 and len(dm.val_set) == 10000
    counts = torch.bincount(dm.train_set.labels, minlength=10)
    assert (counts == 6000).all()  # Fashion-MNIST is exactly balanced


def test_download_fallback_goes_through_torchvision(tmp_path, monkeypatch, fmnist_root):
    """With nothing on disk and download=true, torchvision's FashionMNIST fetches into download_dir."""
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:  # stands in for the network download: writes the same four files
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            for f in fmnist_root.iterdir():
                (raw / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    found = locate_fashion_mnist(None, download=True, download_dir=tmp_path / "data")
    assert found == tmp_path / "data" / "FashionMNIST" / "raw"
    assert [c[1] for c in calls] == [True, False] and all(c[2] for c in calls)
    # A second call finds the download without fetching again.
    assert locate_fashion_mnist(None, download=True, download_dir=tmp_path / "data") == found
    assert len(calls) == 2


def test_flips_come_from_the_worker_generator_not_the_global_one(fmnist_root):
    """As in the other DataModules: reproducible from torch's seed, without drawing from its stream."""
    dm = FashionMNISTDataModule(root=str(fmnist_root), download=False, random_flip=True)
    dm.setup("fit")
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        dataset = type(dm.train_set)(dm.train_set.images, dm.train_set.labels, 32, random_flip=True)
        state = torch.get_rng_state()
        draws.append(torch.stack([dataset[i][0] for i in range(64)]))
        assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(draws[0], draws[1])
    plain = torch.stack([dm.train_set.images[i].float().div(127.5).sub(1) for i in range(64)])
    flipped = [bool(torch.equal(draws[0][i, 0, 2:30, 2:30], plain[i].flip(-1))) for i in range(64)]
    unflipped = [bool(torch.equal(draws[0][i, 0, 2:30, 2:30], plain[i])) for i in range(64)]
    assert all(f or u for f, u in zip(flipped, unflipped, strict=True)) and 10 < sum(flipped) < 54
    assert dm.resolution == 32
