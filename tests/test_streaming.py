"""LitData shards: write_shards round trips, clear refusals, DDP sharding, loader resume and the SIGKILL resume."""

from __future__ import annotations

import collections
import io
import json
import logging
import multiprocessing
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spectral_diffusion.data import FashionMNISTDataModule, ImageFolderDataModule, LatentDataModule
from spectral_diffusion.data.image_dataset import UnreadableImageError
from spectral_diffusion.data.shard_format import SIDECAR, ShardSetError, read_index
from spectral_diffusion.data.shards import write_shards
from spectral_diffusion.data.streaming import ResumableStreamingDataLoader, ShardSamples, StreamingDataModule
from spectral_diffusion.data.text_embeddings import TextEmbeddingDataModule, TextEmbeddings
from tests import test_data_formats
from tests.conftest import write_idx
from tests.train_subprocess import assert_same_training_state, describe, kill_then_rerun, load, run_train

pytest.importorskip("litdata")

# The data sets in their real on-disk formats, as tests/test_data_formats.py writes them (session fixtures).
cifar_root = test_data_formats.cifar_root  # cifar-10-batches-py/: 20 training and 6 test images
lsun_images = test_data_formats.lsun_images
lsun_root = test_data_formats.lsun_root  # church_outdoor_{train,val}_lmdb: 7 and 3 images, JPEG and WebP

#: LitData's writer processes from the fork server that tests/conftest.py preloads with torch and LitData:
#: started in a fraction of a second (spawn, LitData's default, takes seconds per call), and, unlike fork,
#: safe in a test process whose earlier tests left threads behind (a fork of it hung in CI).
FAST = {"num_workers": 1, "start_method": "forkserver"}


def key(image: torch.Tensor) -> bytes:
    return image.numpy().tobytes()


@pytest.fixture(scope="module")
def noisy_fmnist(tmp_path_factory) -> Path:
    """A Fashion-MNIST of random pixels (64 train, 24 test): every image is unique, so images identify samples."""
    root = tmp_path_factory.mktemp("noisy_fmnist")
    rng = np.random.default_rng(5)
    for split, n in (("train", 64), ("t10k", 24)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return root


def fmnist(root: Path, **kwargs) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(root=str(root), download=False, **kwargs)


@pytest.fixture(scope="module")
def fmnist_shards(noisy_fmnist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "fmnist"
    write_shards(fmnist(noisy_fmnist, random_flip=True), str(out), **FAST)
    return out


def test_writing_shards_leaves_the_callers_start_method_alone(noisy_fmnist, tmp_path):
    """litdata.optimize forces its start method on the whole process; write_shards puts the caller's back."""
    multiprocessing.set_start_method("spawn", force=True)
    try:
        write_shards(fmnist(noisy_fmnist), str(tmp_path / "shards"), **FAST)  # LitData's writer: forkserver
        assert multiprocessing.get_start_method() == "spawn"
    finally:
        multiprocessing.set_start_method(None, force=True)


def streaming(input_dir, **kwargs) -> StreamingDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 8)
    dm = StreamingDataModule(str(input_dir), **kwargs)
    dm.setup("fit")
    return dm


# -- round trips ------------------------------------------------------------------------------------
def test_pixel_data_round_trips_exactly_and_an_epoch_covers_the_training_split(noisy_fmnist, fmnist_shards):
    source = fmnist(noisy_fmnist)
    source.setup("fit")
    dm = streaming(fmnist_shards, random_flip=False, num_workers=2)
    assert dm.image_shape == (1, 32, 32) and dm.num_classes == 10 and not dm.provides_latents
    assert dm.meta["encoding"] == "png" and dm.meta["random_flip"] is True  # recorded from the source config
    # Validation: the held-out shards in their stored order, bit for bit the source's test split.
    assert len(dm.val_set) == 24
    for i in range(24):
        image, label = dm.val_set[i]
        assert torch.equal(image, source.val_set[i][0]) and int(label) == int(source.val_set[i][1])
    # One shuffled training epoch: every training image once, with its label.
    expected = collections.Counter((key(source.train_set[i][0]), int(source.train_set[i][1])) for i in range(64))
    seen = collections.Counter()
    order = []
    for images, labels in dm.train_dataloader():
        assert images.shape == (8, 1, 32, 32) and labels.dtype == torch.int64
        seen.update((key(im), int(lb)) for im, lb in zip(images, labels, strict=True))
        order += [key(im) for im in images]
    assert seen == expected
    assert order != [key(source.train_set[i][0]) for i in range(64)]  # LitData shuffled it


def test_validation_may_read_the_original_data_module(noisy_fmnist, fmnist_shards):
    source = fmnist(noisy_fmnist, batch_size=8)
    dm = streaming(fmnist_shards, val_source=source)
    assert dm.val_set is source.val_set
    images = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(images, torch.stack([source.val_set[i][0] for i in range(24)]))


def test_training_flips_are_keyed_by_seed_epoch_and_index(fmnist_shards):
    plain = {key(im) for im, _ in streaming(fmnist_shards, random_flip=False).val_set}  # unflipped reference
    train = streaming(fmnist_shards, random_flip=False).train_set
    unflipped = {key(train[i][0]) for i in range(len(train))}

    def epoch_images(workers: int) -> dict[bytes, bool]:
        dm = streaming(fmnist_shards, num_workers=workers)  # random_flip from the source config: true
        out = {}
        for images, _ in dm.train_dataloader():
            for im in images:
                out[key(im) if key(im) in unflipped else key(im.flip(-1))] = key(im) not in unflipped
        return out

    zero, two = epoch_images(0), epoch_images(2)
    assert len(zero) == 64 and set(zero) == unflipped and 8 < sum(zero.values()) < 56
    assert zero == two  # which worker reads an image does not change its flip
    assert plain.isdisjoint(unflipped)  # (train and test images differ: the keys identify samples)


def test_encoded_images_keep_their_bytes_and_unreadable_ones_are_reported_and_left_out(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    files = {}
    for name in ("a.jpg", "b.png", "c_truncated.jpg", "d.webp", "e.jpg"):
        buffer = io.BytesIO()
        fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buffer, fmt)
        data = buffer.getvalue()[: 300 if "truncated" in name else None]
        (folder / name).write_bytes(data)
        files[name] = data
    source = ImageFolderDataModule(str(folder), resolution=8, val_fraction=0, random_flip=False, num_workers=0)
    with caplog.at_level(logging.WARNING):
        written = write_shards(source, str(tmp_path / "shards"), **FAST)
    assert list(written) == ["train"]  # no validation images: no val shard set
    sidecar = written["train"]
    assert sidecar["count"] == 4 and sidecar["encoding"] == "source" and sidecar["resolution"] == 8
    assert len(sidecar["skipped"]) == 1 and "c_truncated.jpg" in sidecar["skipped"][0]
    assert any(
        "left 1 unreadable image(s) out" in r.getMessage() and "c_truncated.jpg" in r.getMessage()
        for r in caplog.records
    )
    # The chunks hold the files' own bytes, not re-encoded ones.
    from litdata import StreamingDataset

    raw = StreamingDataset(str(tmp_path / "shards" / "train"))
    stored = {int(raw[i]["index"]): bytes(raw[i]["image"]) for i in range(len(raw))}
    names = ["a.jpg", "b.png", "c_truncated.jpg", "d.webp", "e.jpg"]
    assert stored == {i: files[names[i]] for i in (0, 1, 3, 4)}
    # Decoded as the folder module decodes them, bit for bit.
    dm = streaming(tmp_path / "shards", validation="none")
    assert dm.image_shape == (3, 8, 8) and dm.val_set is None and dm.val_dataloader() == []
    source.setup("fit")
    samples = ShardSamples(dm.train_set)  # the stored order: the source's
    for position, index in enumerate((0, 1, 3, 4)):
        assert torch.equal(samples[position][0], source.train_set.load(index))

    strict = ImageFolderDataModule(str(folder), resolution=8, val_fraction=0, on_corrupt="error", num_workers=0)
    with pytest.raises(UnreadableImageError, match=r"c_truncated\.jpg.*leave it out of the shards"):
        write_shards(strict, str(tmp_path / "strict"), **FAST)


def latent_store(path: Path, count: int, shape=(4, 4, 4), labels=True) -> None:
    path.mkdir(parents=True)
    rng = np.random.default_rng(7)
    np.save(path / "latents.npy", rng.standard_normal((count, *shape)).astype(np.float16))
    if labels:
        np.save(path / "labels.npy", rng.integers(0, 3, count).astype(np.int64))
    meta = {
        "format_version": 1,
        "shape": list(shape),
        "count": count,
        "latent_stats": {"shift": [0.1, -0.2, 0.0, 0.3], "scale": [2.0, 1.5, 1.0, 0.5]},
        "has_labels": labels,
        "num_classes": 3 if labels else None,
        "first_stage": {"kind": "framework", "note": "test"},
        "dtype": "float16",
    }
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["cifar10", "cifar10_at_16", "lsun"])
def test_other_data_sets_round_trip_exactly(name, cifar_root, lsun_root, tmp_path):
    """CIFAR-10's pixel arrays (as they are, and resized to 16x16) and LSUN's lmdb values (JPEG and WebP)."""
    from spectral_diffusion.data import CIFAR10DataModule, LSUNDataModule

    def source():
        if name == "lsun":
            return LSUNDataModule(str(lsun_root), resolution=8, num_workers=0, random_flip=False)
        return CIFAR10DataModule(str(cifar_root), resolution=16 if name.endswith("16") else 32, random_flip=False)

    write_shards(source(), str(tmp_path / "shards"), **FAST)
    reference = source()
    reference.setup("fit")
    dm = streaming(tmp_path / "shards", batch_size=2)
    assert dm.image_shape == reference.image_shape and dm.meta["encoding"] == ("source" if name == "lsun" else "png")
    for split, shards, expected in (
        ("train", ShardSamples(dm.train_set), reference.train_set),
        ("val", dm.val_set, reference.val_set),
    ):
        assert len(shards) == len(expected), split
        for i in range(len(expected)):
            assert torch.equal(shards[i][0], expected[i][0]) and int(shards[i][1]) == int(expected[i][1]), (split, i)


def test_latents_round_trip_with_their_normalisation(tmp_path):
    latent_store(tmp_path / "store" / "train", 24)
    latent_store(tmp_path / "store" / "val", 8)
    source = LatentDataModule(str(tmp_path / "store"), batch_size=8)
    written = write_shards(source, str(tmp_path / "shards"), kind="latents", **FAST)
    assert written["train"]["dtype"] == "float16" and written["val"]["count"] == 8
    dm = streaming(tmp_path / "shards", latent_shape=[4, 4, 4])
    assert dm.provides_latents and dm.image_shape == (4, 4, 4) and dm.num_classes == 3
    assert dm.latent_stats == source.latent_stats and dm.first_stage_description == source.first_stage_description
    val = [dm.val_set[i] for i in range(8)]
    reference = source.val_store.normalised(np.arange(8))
    assert torch.equal(torch.stack([v[0] for v in val]), reference)  # the store's own normalisation, exactly
    assert [int(v[1]) for v in val] == source.val_store.labels.tolist()
    with pytest.raises(
        ShardSetError, match=r"data.latent_shape=\[4, 8, 8\] but the shards .* hold latents of shape \[4, 4, 4\]"
    ):
        streaming(tmp_path / "shards", latent_shape=[4, 8, 8])
    with pytest.raises(ShardSetError, match="kind=latents writes cached latents: give data=latents"):
        write_shards(fmnist(tmp_path), str(tmp_path / "wrong"), kind="latents", **FAST)


def test_text_contexts_travel_with_the_images(noisy_fmnist, tmp_path):
    table = TextEmbeddings(
        torch.randn(10, 3, 5).half(), torch.ones(10, 3, dtype=torch.bool), [f"class {i}" for i in range(10)]
    )
    table.save(tmp_path / "table.pt")
    source = TextEmbeddingDataModule(str(tmp_path / "table.pt"), root=str(noisy_fmnist), download=False)
    write_shards(source, str(tmp_path / "shards"), **FAST)
    dm = streaming(tmp_path / "shards")
    assert dm.context_dim == 5
    for i in (0, 5, 23):
        image, label, context, mask = dm.val_set[i]
        expected = source.val_set[i]
        assert torch.equal(image, expected[0]) and int(label) == int(expected[1])
        assert torch.equal(context, expected[2]) and torch.equal(mask, expected[3])
    images, labels, contexts, masks = next(iter(dm.train_dataloader()))
    assert contexts.shape == (8, 3, 5) and masks.dtype == torch.bool


# -- refusals ---------------------------------------------------------------------------------------
def test_clear_errors_for_bad_inputs_and_outputs(fmnist_shards, noisy_fmnist, tmp_path):
    with pytest.raises(ShardSetError, match=rf"data.input_dir={tmp_path} holds no LitData index"):
        StreamingDataModule(str(tmp_path))
    with pytest.raises(ShardSetError, match=r"data.resolution=64 but the shards .* were written at 32x32"):
        StreamingDataModule(str(fmnist_shards), resolution=64)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ShardSetError, match=rf"data.cache_dir={blocker}/cache is not writable"):
        StreamingDataModule(str(fmnist_shards), cache_dir=str(blocker / "cache"))
    with pytest.raises(ShardSetError, match="already holds a complete shard set .* pass overwrite=true"):
        write_shards(fmnist(noisy_fmnist), str(fmnist_shards), **FAST)
    (tmp_path / "mine" / "train").mkdir(parents=True)
    (tmp_path / "mine" / "train" / "notes.txt").write_text("keep me")
    with pytest.raises(ShardSetError, match=r"already holds files that are not shards \(notes.txt\)"):
        write_shards(fmnist(noisy_fmnist), str(tmp_path / "mine"), **FAST)
    assert (tmp_path / "mine" / "train" / "notes.txt").read_text() == "keep me"


def test_an_index_that_would_unpickle_is_refused(fmnist_shards, tmp_path):
    import shutil

    copy = tmp_path / "evil"
    shutil.copytree(fmnist_shards / "train", copy)
    index = json.loads((copy / "index.json").read_text())
    index["config"]["data_format"][0] = "pickle"
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardSetError, match=r"serializer\(s\) \['pickle'\].* may unpickle"):
        read_index(str(copy), None)
    with pytest.raises(ShardSetError, match="may unpickle"):
        StreamingDataModule(str(copy))


def test_an_interrupted_write_resumes_and_another_request_is_refused(noisy_fmnist, tmp_path):
    out = tmp_path / "shards"
    write_shards(fmnist(noisy_fmnist), str(out), splits=("train",), **FAST)
    sidecar = json.loads((out / "train" / SIDECAR).read_text())
    sidecar["complete"] = False  # as a write killed before its end leaves it
    (out / "train" / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(ShardSetError, match="says the write did not finish"):
        StreamingDataModule(str(out))
    with pytest.raises(ShardSetError, match="holds an interrupted write of another request"):
        write_shards(fmnist(noisy_fmnist, pad_to=36), str(out), splits=("train",), **FAST)
    write_shards(fmnist(noisy_fmnist), str(out), splits=("train",), **FAST)  # killed after LitData's index
    assert json.loads((out / "train" / SIDECAR).read_text())["complete"]
    assert len(streaming(out).train_set) == 64


def test_local_uri_streams_through_the_cache_dir(fmnist_shards, tmp_path):
    """``local:`` is LitData's stand-in for object storage: chunks are 'downloaded' into data.cache_dir."""
    cache = tmp_path / "cache"
    dm = streaming(f"local:{fmnist_shards}", cache_dir=str(cache), max_cache_size="1GB", random_flip=False)
    reference = streaming(fmnist_shards, random_flip=False)
    assert [key(x) for x, _ in dm.train_dataloader()] == [key(x) for x, _ in reference.train_dataloader()]
    assert list(cache.rglob("chunk-*.bin"))  # the chunks came through the cache


# -- resume and DDP -----------------------------------------------------------------------------------
def test_loader_state_of_the_consumed_batches_resumes_exactly(fmnist_shards):
    def loader(consumed=None):
        dm = streaming(fmnist_shards, num_workers=2)
        return ResumableStreamingDataLoader(
            dm.train_set, batch_size=8, num_workers=2, drop_last=True, consumed_batches=consumed
        )

    reference = [key(x[0]) for x, _ in loader()]
    assert len(reference) == 8
    consumed = {"n": 3}
    first = loader(lambda: consumed["n"])
    it = iter(first)
    for _ in range(5):  # two more than the loop consumed: read ahead
        next(it)
    state = first.state_dict()
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    assert [key(x[0]) for x, _ in resumed] == reference[3:]


def test_resuming_with_other_loader_workers_is_warned_and_repeats_nothing(fmnist_shards, caplog):
    def loader(workers):
        dm = streaming(fmnist_shards, num_workers=workers)
        return ResumableStreamingDataLoader(
            dm.train_set, batch_size=8, num_workers=workers, drop_last=True, consumed_batches=lambda: 3
        )

    first = loader(2)
    it = iter(first)
    seen = [key(im) for _ in range(3) for im in next(it)[0]]
    state = first.state_dict()
    del it
    resumed = loader(0)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(state)
    assert any("num_workers 2 -> 1" in r.getMessage() for r in caplog.records)
    rest = [key(im) for batch, _ in resumed for im in batch]
    assert len(set(seen + rest)) == len(seen + rest)  # LitData's elastic resume: no image twice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_images(rank: int, world: int, port: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dm = streaming(shards, num_workers=2, random_flip=False)
        images = [key(im) for batch, _ in dm.train_dataloader() for im in batch]
        Path(out, f"rank{rank}.bin").write_bytes(b"".join(images))
        validation = [key(im) for batch, _ in dm.val_dataloader() for im in batch]
        Path(out, f"rank{rank}_val.bin").write_bytes(b"".join(validation))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_read_disjoint_samples_that_cover_the_epoch_and_validate_once(
    noisy_fmnist, fmnist_shards, tmp_path
):
    torch.multiprocessing.start_processes(
        _rank_images, args=(2, _free_port(), str(fmnist_shards), str(tmp_path)), nprocs=2, start_method="forkserver"
    )
    size = 32 * 32 * 4
    ranks = []
    for rank in (0, 1):
        data = (tmp_path / f"rank{rank}.bin").read_bytes()
        ranks.append({data[i : i + size] for i in range(0, len(data), size)})
        assert len(data) // size == len(ranks[-1]) == 32  # 4 batches of 8, no image twice
    source = fmnist(noisy_fmnist)
    source.setup("fit")
    assert not ranks[0] & ranks[1]
    assert ranks[0] | ranks[1] == {key(source.train_set[i][0]) for i in range(64)}
    # Validation: each rank its block of the held-out shards, in order, every image exactly once.
    val = b"".join((tmp_path / f"rank{rank}_val.bin").read_bytes() for rank in (0, 1))
    assert val == b"".join(key(source.val_set[i][0]) for i in range(24))


RESUME_SETTINGS = (
    "trainer.max_steps=12",
    "data.batch_size=8",
    "data.random_flip=true",
    "data.num_workers=2",
    "module.warmup_steps=5",
    "model.dropout=0.1",
    "trainer.val_check_interval=4",
    "callbacks.sample_grid.every_n_steps=0",
    "callbacks.sample_grid.num_samples=2",
)


def streaming_overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "debug=tiny",
        "data=streaming",
        f"data.input_dir={shards}",
        "callbacks.progress=null",
        "logger=csv",
        f"paths.output_dir={run_dir}",
        f"paths.root_dir={run_dir.parent}",
        *RESUME_SETTINGS,
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_rerun_on_shards_is_bitwise_an_uninterrupted_run(fmnist_root, tmp_path):
    """~60 s on 2 cores: train.py on shards with 2 loader workers, killed with SIGKILL after a checkpoint at a
    random step, then the same command again, ends with the weights of an uninterrupted run (12 steps of 8
    batches per epoch: the run crosses an epoch)."""
    shards = tmp_path / "shards"
    write_shards(fmnist(fmnist_root), str(shards), **FAST)
    kill_step = random.Random().randrange(3, 12)
    print(f"killing at step {kill_step}")
    reference = run_train(streaming_overrides(shards, tmp_path / "reference"))
    assert reference.returncode == 0, describe(reference)
    command = streaming_overrides(shards, tmp_path / "killed")
    kill_then_rerun(command, tmp_path / "killed", kill_step, hooks_dir=tmp_path / "hooks")
    assert_same_training_state(
        load(tmp_path / "reference" / "checkpoints" / "last.ckpt"),
        load(tmp_path / "killed" / "checkpoints" / "last.ckpt"),
    )
