"""Latent stores: written once, read back exactly, atomic; LatentDataModule; scripts/encode_latents.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader

from spectral_diffusion.assembly.first_stages import framework_autoencoder
from spectral_diffusion.autoencoders import KLAutoencoder, KLFirstStage
from spectral_diffusion.data import (
    FashionMNISTDataModule,
    LatentDataModule,
    LatentStoreError,
    base,
    write_latent_store,
)
from spectral_diffusion.data.base import UnpaddedDistributedSampler
from spectral_diffusion.utils.checkpoint import METADATA_KEY

from .conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
TINY_AE = dict(in_channels=1, base_channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, latent_channels=4,
               attention_resolutions=[], mid_attention=False, head_channels=8, dropout=0.0, image_size=32)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread. Two threads only hand work back and forth, and on a busy
    machine their OpenMP spin-waits cost many times the work itself (measured: 0.5 s vs 32 s CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_first_stage() -> KLFirstStage:
    torch.manual_seed(0)
    stage = KLFirstStage(KLAutoencoder(**TINY_AE))
    stage.set_latent_stats(torch.tensor([0.1, -0.2, 0.3, 0.0]), torch.tensor([0.5, 2.0, 1.0, 0.25]))
    return stage


@pytest.fixture
def fmnist(fmnist_root) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(root=str(fmnist_root), download=False, batch_size=16)
    dm.setup("fit")
    return dm


def ordered(dataset, batch_size: int = 16) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def all_images(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def test_fashion_mnist_provides_images_not_latents(fmnist):
    assert fmnist.provides_latents is False


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-5), ("float16", 2e-2)])
def test_store_reproduces_the_encoder_including_flips(fmnist, tmp_path, dtype, atol):
    stage = tiny_first_stage()
    path = write_latent_store(
        tmp_path / "train", stage, ordered(fmnist.train_set), flips=True, dtype=dtype, num_classes=10
    )
    meta = json.loads((path / "meta.json").read_text())
    assert meta["count"] == 128 and meta["num_source_samples"] == 64 and meta["shape"] == [4, 8, 8]
    assert meta["latent_stats"] == stage.latent_stats() and meta["first_stage"]["kind"] == "framework_kl"
    assert np.load(path / "latents.npy", mmap_mode="r").dtype == np.dtype(dtype)

    images, labels = all_images(fmnist.train_set)
    with torch.no_grad():
        expected = torch.cat([stage.encode(images), stage.encode(images.flip(-1))])
    dm = LatentDataModule(str(path), batch_size=128)
    assert dm.provides_latents and dm.image_shape == (4, 8, 8) and dm.num_classes == 10
    assert dm.latent_stats == stage.latent_stats() and dm.first_stage_description["kind"] == "framework_kl"
    batch = dm.train_store.normalised(np.arange(128))
    assert batch.dtype == torch.float32
    assert torch.allclose(batch, expected, atol=atol, rtol=atol)
    assert np.array_equal(dm.train_store.labels, np.concatenate([labels.numpy()] * 2))


def test_data_module_yields_shuffled_batches_of_every_entry(fmnist, tmp_path):
    stage = tiny_first_stage()
    # Distinct images labelled with their own index, so a label tells which entry a latent must be.
    images = torch.rand(48, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pairs = list(zip(images, torch.arange(48), strict=True))
    write_latent_store(tmp_path / "out" / "train", stage, ordered(pairs), flips=True, num_classes=48)
    write_latent_store(tmp_path / "out" / "val", stage, ordered(fmnist.val_set, 7), num_classes=10)
    dm = LatentDataModule(str(tmp_path / "out"), batch_size=16)  # finds train/ and val/
    dm.setup("fit")
    store = dm.train_store
    loader = dm.train_dataloader()
    train = list(loader)
    assert len(train) == 6 and all(x.shape == (16, 4, 8, 8) and y.shape == (16,) for x, y in train)
    # Every entry exactly once per epoch, each with its own label (entry i + 48 is image i flipped).
    seen = torch.cat([x for x, _ in train])
    assert torch.equal(seen.sort(dim=0).values, store.normalised(np.arange(96)).sort(dim=0).values)
    labels = torch.cat([y for _, y in train]).numpy()
    same = (seen == store.normalised(labels)).flatten(1).all(1) | (seen == store.normalised(labels + 48)).flatten(
        1
    ).all(1)
    assert same.all()
    second_epoch = torch.cat([x for x, _ in loader])
    assert not torch.equal(second_epoch, seen)  # reshuffled every epoch
    val = list(dm.val_dataloader())
    assert [len(y) for _, y in val] == [16, 16] and dm.val_store.meta["count"] == 32


def test_val_fraction_holds_out_images_with_their_flips(fmnist, tmp_path):
    write_latent_store(tmp_path / "s", tiny_first_stage(), ordered(fmnist.train_set), flips=True)
    dm = LatentDataModule(str(tmp_path / "s"), batch_size=8, val_fraction=0.25, seed=3)
    assert len(dm.val_entries) == 16 and len(dm.train_entries) == 96
    held = set(dm.val_entries.tolist())
    assert not held & {int(i) % 64 for i in dm.train_entries}  # no held-out image trains, flipped or not
    assert all(i < 64 for i in held)  # validation sees the originals only


def test_unlabelled_data_yields_latents_only(tmp_path):
    images = torch.rand(10, 1, 32, 32) * 2 - 1
    write_latent_store(tmp_path / "s", tiny_first_stage(), DataLoader(images, batch_size=4), dtype="float32")
    dm = LatentDataModule(str(tmp_path / "s"), batch_size=5)
    batch = next(iter(dm.train_dataloader()))
    assert torch.is_tensor(batch) and batch.shape == (5, 4, 8, 8) and dm.num_classes is None
    assert not (tmp_path / "s" / "labels.npy").exists()


def test_validation_under_ddp_reads_every_entry_once(tmp_path, monkeypatch):
    """10 validation entries over 3 ranks: shares of 3, 3 and 4, none repeated (torch's sampler would pad to 12)."""
    images = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    write_latent_store(tmp_path / "s", tiny_first_stage(), DataLoader(images, batch_size=4), dtype="float32")
    dm = LatentDataModule(str(tmp_path / "s"), batch_size=2, val_path=str(tmp_path / "s"))
    everything = torch.cat(list(dm.val_dataloader()))
    assert everything.shape[0] == 10
    shares = []
    for rank in range(3):
        monkeypatch.setattr(base, "distributed_world", lambda rank=rank: (3, rank))
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler.sampler, UnpaddedDistributedSampler)
        shares.append(torch.cat(list(loader)))
    assert [len(s) for s in shares] == [3, 3, 4]
    assert torch.equal(torch.cat(shares), everything)


def test_failed_write_leaves_no_partial_store(fmnist, tmp_path):
    def dying_loader():
        for i, batch in enumerate(ordered(fmnist.train_set)):
            if i == 2:
                raise KeyboardInterrupt("killed mid-encode")
            yield batch

    with pytest.raises(KeyboardInterrupt):
        write_latent_store(tmp_path / "store", tiny_first_stage(), dying_loader(), num_samples=64)
    assert list(tmp_path.iterdir()) == []  # neither the store nor its temporary directory

    # An existing store survives a failed overwrite, and is refused without overwrite=True.
    write_latent_store(tmp_path / "store", tiny_first_stage(), ordered(fmnist.train_set))
    before = (tmp_path / "store" / "meta.json").read_text()
    with pytest.raises(KeyboardInterrupt):
        write_latent_store(tmp_path / "store", tiny_first_stage(), dying_loader(), num_samples=64, overwrite=True)
    assert (tmp_path / "store" / "meta.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    with pytest.raises(FileExistsError, match="already exists"):
        write_latent_store(tmp_path / "store", tiny_first_stage(), ordered(fmnist.train_set))


def test_missing_or_incomplete_store_is_named(fmnist, tmp_path):
    with pytest.raises(LatentStoreError, match=r"nope does not exist.*scripts/encode_latents.py"):
        LatentDataModule(str(tmp_path / "nope"))
    write_latent_store(tmp_path / "s", tiny_first_stage(), ordered(fmnist.train_set), num_classes=10)
    (tmp_path / "s" / "labels.npy").unlink()
    with pytest.raises(LatentStoreError, match=r"labels.npy is missing"):
        LatentDataModule(str(tmp_path / "s"))
    (tmp_path / "s" / "meta.json").unlink()
    with pytest.raises(LatentStoreError, match=r"meta.json is missing.*encode_latents.py"):
        LatentDataModule(str(tmp_path / "s"))
    with pytest.raises(ValueError, match="has no latent stats"):
        write_latent_store(tmp_path / "t", KLFirstStage(KLAutoencoder(**TINY_AE)), ordered(fmnist.train_set))


# -- scripts/encode_latents.py --------------------------------------------------------------------
def load_script():
    spec = importlib.util.spec_from_file_location("encode_latents_script", ROOT / "scripts" / "encode_latents.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def framework_checkpoint(path: Path) -> Path:
    """A checkpoint laid out as train.py experiment=fmnist_autoencoder writes it (weights, config, stats)."""
    stage = tiny_first_stage()
    torch.save(
        {
            "global_step": 7,
            "state_dict": {f"net.{k}": v for k, v in stage.net.state_dict().items()},
            METADATA_KEY: {
                "config": {"model": {"_target_": "spectral_diffusion.autoencoders.KLAutoencoder", **TINY_AE}},
                "latent_stats": stage.latent_stats(),
            },
        },
        path,
    )
    return path


def test_encode_latents_script_with_the_framework_autoencoder(fmnist_root, tmp_path):
    ckpt = framework_checkpoint(tmp_path / "ae.ckpt")
    cfg = compose_config(
        "encode_latents",
        tmp_path,
        [f"data.root={fmnist_root}", "data.download=false", f"autoencoder.ckpt_path={ckpt}",
         f"output={tmp_path}/latents", "flips=true", "dtype=float32", "batch_size=20"],
    )  # fmt: skip
    result = load_script().encode_latents(cfg)
    assert set(result) == {"train", "val"}
    dm = LatentDataModule(str(tmp_path / "latents"), batch_size=8)
    assert len(dm.train_store) == 128 and len(dm.val_store) == 32  # flips for training only
    stage = framework_autoencoder(str(ckpt))
    assert dm.latent_stats == stage.latent_stats()  # the checkpoint's stats, not re-estimated
    assert dm.first_stage_description["global_step"] == 7
    fm = FashionMNISTDataModule(root=str(fmnist_root), download=False)
    fm.setup("fit")
    images, _ = all_images(fm.val_set)
    with torch.no_grad():
        assert torch.allclose(dm.val_store.normalised(np.arange(32)), stage.encode(images), atol=1e-5)


def test_encode_latents_script_estimates_missing_stats(fmnist_root, tmp_path):
    AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=32,
    ).save_pretrained(tmp_path / "pipe" / "vae")
    cfg = compose_config(
        "encode_latents",
        tmp_path,
        ["autoencoder=diffusers", f"autoencoder.path={tmp_path}/pipe", "autoencoder.subfolder=vae",
         f"data.root={fmnist_root}", "data.download=false", f"output={tmp_path}/latents", "max_samples=40",
         "stats_max_samples=64"],
    )  # fmt: skip
    load_script().encode_latents(cfg)
    dm = LatentDataModule(str(tmp_path / "latents"), batch_size=8)
    assert dm.image_shape == (4, 16, 16) and len(dm.train_store) == 40 and len(dm.val_store) == 32
    assert dm.first_stage_description["kind"] == "diffusers_kl"
    # Estimated on all 64 training images; the first 40 of them, normalised, are near zero-mean unit-std.
    z = dm.train_store.normalised(np.arange(40))
    assert abs(z.mean().item()) < 0.2 and 0.8 < z.std().item() < 1.2


def test_encode_latents_refuses_identity(tmp_path):
    cfg = compose_config("encode_latents", tmp_path, ["autoencoder=identity", f"output={tmp_path}/x"])
    with pytest.raises(ValueError, match="autoencoder=identity is pixel space"):
        load_script().encode_latents(cfg)
