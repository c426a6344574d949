"""CIFAR-10, CelebA-HQ, LSUN and image-folder DataModules on tiny fixtures in the real on-disk formats.

Fixtures are written here exactly as the data sets ship: CIFAR-10's pickled batches, LSUN's lmdb
databases (image ids as keys, WebP and JPEG values), CelebA-HQ's numbered JPEGs as a folder and a
zip with LDM-style split lists, and a folder of awkward files (truncated JPEG, CMYK JPEG, RGBA
PNG, 16-bit PNG).
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import re
import shutil
import struct
import zipfile
from pathlib import Path

import hydra
import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler, SequentialSampler

from spectral_diffusion.data import (
    CelebAHQDataModule,
    CIFAR10DataModule,
    DataNotFoundError,
    ImageFolderDataModule,
    ImageTooSmallError,
    LSUNDataModule,
    UnreadableImageError,
    base,
    sources,
)
from spectral_diffusion.data.base import UnpaddedDistributedSampler
from spectral_diffusion.data.celebahq import SplitMatcher
from spectral_diffusion.data.cifar10 import read_pickle
from spectral_diffusion.data.lsun import key_cache_path, lmdb_keys
from spectral_diffusion.data.resumable_sampler import AugmentationKey, epoch_permutation
from spectral_diffusion.data.sources import ZipSource
from spectral_diffusion.data.transforms import ImageTransform, center_square_box, to_rgb

from .conftest import compose_config

RES = 8


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def random_rgb(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def setup_dm(dm):
    dm.prepare_data()
    dm.setup("fit")
    return dm


def check_images(images: torch.Tensor, count: int, resolution: int = RES) -> None:
    assert images.shape == (count, 3, resolution, resolution) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0


# --------------------------------------------------------------------------- fixtures


def py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's cPickle wrote CIFAR-10's batches (protocol 2, byte strings as py2 str).

    Python 3 cannot write these: it pickles ``bytes`` through ``_codecs.encode``. Supports the
    types in the batches: dicts, lists, ints, byte strings and 2-D uint8 arrays.
    """

    def string(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def integer(n: int) -> bytes:
        return (
            b"K" + bytes([n])
            if 0 <= n < 256
            else b"M" + struct.pack("<H", n)
            if 0 <= n < 65536
            else b"J" + struct.pack("<i", n)
        )

    def body(x) -> bytes:
        if isinstance(x, bytes):
            return string(x)
        if isinstance(x, int):
            return integer(x)
        if isinstance(x, list):
            return b"](" + b"".join(body(v) for v in x) + b"e"
        if isinstance(x, dict):
            return b"}(" + b"".join(body(k) + body(v) for k, v in x.items()) + b"u"
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2
        dtype = b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R(" + integer(3) + string(b"|")
        dtype += b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
        shape = b"(" + integer(1) + integer(x.shape[0]) + integer(x.shape[1]) + b"\x86"
        reconstruct = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + string(b"b")
        return reconstruct + b"\x87R" + shape + dtype + b"\x89" + string(x.tobytes()) + b"tb"

    return b"\x80\x02" + body(obj) + b"."


def test_py2_pickle_writer_matches_pickle():
    batch = {b"data": np.arange(6144, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 300, 70000], b"name": b"x" * 300}
    loaded = pickle.loads(py2_pickle(batch), encoding="bytes")
    assert loaded.keys() == batch.keys() and loaded[b"labels"] == batch[b"labels"] and loaded[b"name"] == batch[b"name"]
    np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """CIFAR-10 python version: 5 train batches of 4 images, a test batch of 6, batches.meta."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def write(name: str, n: int, offset: int) -> None:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [(offset + i) % 10 for i in range(n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{offset + i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(py2_pickle(batch))

    for i in range(1, 6):
        write(f"data_batch_{i}", 4, 4 * (i - 1))
    write("test_batch", 6, 0)
    names = [
        n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    ]
    (folder / "batches.meta").write_bytes(
        py2_pickle({b"label_names": names, b"num_vis": 3072, b"num_cases_per_batch": 10000})
    )
    return root


def lsun_key(i: int) -> bytes:
    return hashlib.sha1(str(i).encode()).hexdigest().encode()  # LSUN keys: 40 hex digits, ASCII


def write_lmdb(path: Path, items: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()


@pytest.fixture(scope="session")
def lsun_images() -> dict[bytes, Image.Image]:
    """Ten 12x10 church stand-ins keyed like LSUN; every third one is stored as JPEG, the rest WebP."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 1, 12)[None, :, None] * np.linspace(0.5, 1, 10)[:, None, None]
    # Smooth colour ramps, so that JPEG can store them almost exactly.
    return {lsun_key(i): Image.fromarray(np.uint8(40 + 160 * ramp * rng.uniform(0.3, 1, 3))) for i in range(10)}


def lsun_value(i: int, image: Image.Image) -> bytes:
    return encode(image, "JPEG", quality=95) if i % 3 == 0 else encode(image, "WEBP", lossless=True)


@pytest.fixture(scope="session")
def lsun_root(tmp_path_factory, lsun_images) -> Path:
    root = tmp_path_factory.mktemp("lsun")
    items = [(k, lsun_value(i, im)) for i, (k, im) in enumerate(lsun_images.items())]
    write_lmdb(root / "church_outdoor_train_lmdb", dict(items[:7]))
    write_lmdb(root / "church_outdoor_val_lmdb", dict(items[7:]))
    return root


CELEBA_COUNT = 10


@pytest.fixture(scope="session")
def celeba_root(tmp_path_factory) -> Path:
    """``data256x256/00001.jpg`` ... ``00010.jpg`` (16x16), the same tree zipped, and LDM-style split lists."""
    root = tmp_path_factory.mktemp("celebahq")
    folder = root / "celebahq" / "data256x256"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    with zipfile.ZipFile(root / "data256x256.zip", "w") as archive:
        for i in range(1, CELEBA_COUNT + 1):
            data = encode(random_rgb(rng, 16, 16), "JPEG", quality=95)
            (folder / f"{i:05d}.jpg").write_bytes(data)
            archive.writestr(f"data256x256/{i:05d}.jpg", data)
    # LDM's lists name the 0-based CelebA-HQ index: imgHQ00000 is the first image (00001.jpg here).
    (root / "celebahqtrain.txt").write_text("".join(f"imgHQ{i:05d}.npy\n" for i in (7, 0, 1, 2, 3, 4, 5)))
    (root / "celebahqvalidation.txt").write_text("imgHQ00006.npy\nimgHQ00008.npy\n")
    return root


@pytest.fixture(scope="session")
def odd_folder(tmp_path_factory) -> Path:
    """Five images: a good JPEG, a truncated JPEG, a CMYK JPEG, an RGBA PNG and a 16-bit grayscale PNG."""
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(3)
    (root / "a_good.jpg").write_bytes(encode(random_rgb(rng, 10, 10), "JPEG", quality=95))
    full = encode(random_rgb(rng, 10, 10), "JPEG", quality=95)
    (root / "b_truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "c_cmyk.jpg").write_bytes(
        encode(Image.new("RGB", (10, 10), (200, 30, 90)).convert("CMYK"), "JPEG", quality=95)
    )
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red: must come out white
    rgba[:, 5:, 3] = 255  # right half opaque red
    (root / "d_rgba.png").write_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    (root / "e_16bit.png").write_bytes(encode(Image.fromarray(np.full((10, 10), 32896, np.uint16)), "PNG"))
    (root / "notes.txt").write_text("not an image")
    return root


# --------------------------------------------------------------------------- transforms


def test_to_rgb_converts_every_mode_correctly():
    assert np.asarray(to_rgb(Image.new("L", (2, 2), 77))).tolist() == [[[77] * 3] * 2] * 2
    # Alpha is composited onto white: a = 0 -> white, a = 255 -> the colour, in between -> a blend.
    la = to_rgb(Image.fromarray(np.array([[[100, 0], [100, 255], [100, 128]]], np.uint8), "LA"))
    np.testing.assert_allclose(np.asarray(la)[0, :, 0], [255, 100, round(100 * 128 / 255 + 255 * 127 / 255)], atol=1)
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).tolist() == [[[255, 255, 255], [0, 0, 255]]]
    # 16-bit values are scaled by 1/257, not clipped (Pillow's own convert("L") would give 255 here).
    sixteen = Image.fromarray(np.array([[0, 1000, 32896, 65535]], np.uint16))
    assert sixteen.mode == "I;16" and np.asarray(sixteen.convert("L")).max() == 255
    assert np.asarray(to_rgb(sixteen))[0, :, 0].tolist() == [0, 4, 128, 255]
    as_int32 = Image.fromarray(np.array([[0, 32896, 65535, 70000]], np.int32))
    assert as_int32.mode == "I" and np.asarray(to_rgb(as_int32))[0, :, 1].tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError, match="x.tif.*mode F"):
        to_rgb(Image.new("F", (2, 2)), "x.tif")


def test_crop_resize_and_scale_match_the_reference():
    rng = np.random.default_rng(0)
    image = random_rgb(rng, 16, 12)
    assert center_square_box(16, 12) == (2, 0, 14, 12) and center_square_box(5, 8) == (0, 1, 5, 6)
    out = ImageTransform(RES)(image.copy())
    # Reference: crop the central square with numpy slicing, resize it with PIL's bicubic filter.
    square = Image.fromarray(np.asarray(image)[:, 2:14])
    expected = np.asarray(square.resize((RES, RES), Image.Resampling.BICUBIC)).astype(np.float32) / 127.5 - 1
    torch.testing.assert_close(out, torch.from_numpy(expected).permute(2, 0, 1))
    # Exact-size crops are not resampled; 0 -> -1 and 255 -> 1 exactly; a flip mirrors the columns.
    exact = ImageTransform(12)(image.copy())
    torch.testing.assert_close(exact, torch.from_numpy(np.array(image)[:, 2:14]).permute(2, 0, 1).float() / 127.5 - 1)
    extremes = ImageTransform(2)(Image.fromarray(np.array([[[0] * 3, [255] * 3]] * 2, np.uint8)))
    assert extremes[:, :, 0].eq(-1).all() and extremes[:, :, 1].eq(1).all()
    torch.testing.assert_close(ImageTransform(RES)(image.copy(), flip=True), out.flip(-1))


def test_small_images_upscale_or_error_naming_the_file():
    image = Image.new("RGB", (6, 9), (10, 20, 30))
    assert ImageTransform(RES, "upscale")(image.copy()).shape == (3, RES, RES)
    with pytest.raises(ImageTooSmallError, match=r"tiny\.png is 6x9, smaller than data.resolution=8"):
        ImageTransform(RES, "error")(image.copy(), "tiny.png")
    with pytest.raises(ValueError, match="data.small_images='shrink'"):
        ImageTransform(RES, "shrink")


# --------------------------------------------------------------------------- image folders


def test_odd_files_are_converted_and_the_truncated_one_is_skipped(odd_folder, caplog):
    dm = setup_dm(
        ImageFolderDataModule(
            str(odd_folder), resolution=RES, val_fraction=0, random_flip=False, num_workers=0, batch_size=1
        )
    )
    assert len(dm.train_set) == 5 and len(dm.val_set) == 0 and dm.num_classes is None
    with caplog.at_level(logging.WARNING):
        samples = [dm.train_set[i] for i in range(5)]
    images = torch.stack([s[0] for s in samples])
    check_images(images, 5)
    assert all(s[1].dtype == torch.int64 and s[1] == 0 for s in samples)
    # The truncated b_ is replaced by the next readable file, c_ (CMYK, converted back to its colour).
    torch.testing.assert_close(images[1], images[2])
    rgb = (images[2, :, 4, 4] + 1) * 127.5
    torch.testing.assert_close(rgb, torch.tensor([200.0, 30.0, 90.0]), atol=4, rtol=0)
    # RGBA: transparent half white, opaque half red; 16-bit 32896 -> 128.
    assert images[3, :, :, 0].eq(1).all() and torch.allclose(images[3, :, :, -1], torch.tensor([1.0, -1, -1])[:, None])
    torch.testing.assert_close(images[4], torch.full((3, RES, RES), 128 / 127.5 - 1))
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 1 unreadable image" in warnings[0] and "b_truncated.jpg" in warnings[0]


def test_small_images_error_is_not_taken_for_a_corrupt_file(odd_folder):
    dm = setup_dm(
        ImageFolderDataModule(str(odd_folder), resolution=16, val_fraction=0, small_images="error", num_workers=0)
    )
    with pytest.raises(ImageTooSmallError, match="a_good.jpg is 10x10, smaller than data.resolution=16"):
        dm.train_set[0]  # on_corrupt=skip replaces unreadable files, not ones the config rejects


def test_on_corrupt_error_names_the_file_also_from_a_worker(odd_folder):
    dm = setup_dm(
        ImageFolderDataModule(str(odd_folder), resolution=RES, val_fraction=0, on_corrupt="error", num_workers=0)
    )
    with pytest.raises(UnreadableImageError, match="b_truncated.jpg"):
        dm.train_set[1]
    batches_of_five = iter(torch.utils.data.DataLoader(dm.train_set, batch_size=5, num_workers=1))
    with pytest.raises(UnreadableImageError, match="b_truncated.jpg"):
        next(batches_of_five)
    # Stop the worker now: left to the garbage collector, torch waits out a 5 s join timeout.
    batches_of_five._shutdown_workers()


def test_class_folders_give_labels_and_zip_matches_folder(tmp_path):
    rng = np.random.default_rng(4)
    tree = tmp_path / "tree"
    for cls, n in (("cat", 3), ("dog", 2)):
        for i in range(n):
            (tree / cls / "deep").mkdir(parents=True, exist_ok=True)
            random_rgb(rng, 9, 9).save(tree / cls / ("deep" if i else "") / f"{i}.png")
    (tree / ".hidden.png").write_bytes(b"ignored")
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as archive:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(tree).as_posix())
        archive.writestr("__MACOSX/cat/._0.png", b"resource fork")
    kwargs = dict(resolution=RES, class_folders=True, val_fraction=0.4, num_workers=0, batch_size=2)
    folder_dm = setup_dm(ImageFolderDataModule(str(tree), **kwargs))
    zip_dm = setup_dm(ImageFolderDataModule(str(tmp_path / "tree.zip"), **kwargs))
    assert folder_dm.num_classes == zip_dm.num_classes == 2 and folder_dm.class_names == ("cat", "dog")
    assert (len(folder_dm.train_set), len(folder_dm.val_set)) == (3, 2)
    for a, b in ((folder_dm.train_set, zip_dm.train_set), (folder_dm.val_set, zip_dm.val_set)):
        xa, ya = batches(torch.utils.data.DataLoader(a, batch_size=5))
        xb, yb = batches(torch.utils.data.DataLoader(b, batch_size=5))
        torch.testing.assert_close(xa, xb)
        assert ya.tolist() == yb.tolist()
    all_labels = sorted(batches(folder_dm.val_dataloader())[1].tolist() + [int(s[1]) for s in folder_dm.train_set])
    assert all_labels == [0, 0, 0, 1, 1]


def test_zip_is_opened_per_worker_and_two_workers_match_zero(celeba_root, monkeypatch):
    kwargs = dict(resolution=RES, val_fraction=0.5, random_flip=False, batch_size=2)
    dm0 = setup_dm(ImageFolderDataModule(str(celeba_root / "data256x256.zip"), num_workers=0, **kwargs))
    dm0.val_set[0]  # opens the zip in this process before the workers fork
    source = dm0.val_set.source
    assert isinstance(source, ZipSource) and source._archive is not None
    assert pickle.loads(pickle.dumps(source))._archive is None
    opened_here = source._handle()
    with monkeypatch.context() as patch:
        patch.setattr(sources.os, "getpid", lambda: -1)  # as seen from a forked worker
        assert source._handle() is not opened_here
    source._archive = opened_here
    dm2 = setup_dm(ImageFolderDataModule(str(celeba_root / "data256x256.zip"), num_workers=2, **kwargs))
    dm2.val_set.source = source  # the very source whose handle is already open
    x0, _ = batches(dm0.val_dataloader())
    x2, _ = batches(dm2.val_dataloader())
    check_images(x0, 5)
    torch.testing.assert_close(x0, x2)


def test_image_folder_layout_errors_name_the_path(tmp_path, odd_folder):
    with pytest.raises(
        DataNotFoundError, match=f"(?s)data.root={re.escape(str(tmp_path / 'nope'))} does not exist.*Expected layout"
    ):
        ImageFolderDataModule(str(tmp_path / "nope"), resolution=RES).prepare_data()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataNotFoundError, match="(?s)empty holds no images.*ROOT/cat/0001.jpg"):
        ImageFolderDataModule(str(tmp_path / "empty"), resolution=RES).prepare_data()
    with pytest.raises(DataNotFoundError, match=r"(?s)outside any class folder \(e.g. a_good.jpg\).*Expected layout"):
        _ = ImageFolderDataModule(str(odd_folder), resolution=RES, class_folders=True).num_classes
    (tmp_path / "x.tar").write_bytes(b"tar")
    with pytest.raises(DataNotFoundError, match="x.tar is a file but not a .zip"):
        ImageFolderDataModule(str(tmp_path / "x.tar"), resolution=RES).prepare_data()
    with pytest.raises(ValueError, match="data.on_corrupt='ignore'"):
        ImageFolderDataModule(str(odd_folder), resolution=RES, on_corrupt="ignore")


# --------------------------------------------------------------------------- CelebA-HQ


@pytest.mark.parametrize("where", ["celebahq", "data256x256.zip"])
def test_celebahq_ldm_split_lists_map_to_numbered_files(celeba_root, where):
    split_files = {"train": str(celeba_root / "celebahqtrain.txt"), "val": str(celeba_root / "celebahqvalidation.txt")}
    dm = setup_dm(CelebAHQDataModule(str(celeba_root / where), resolution=RES, split_files=split_files, num_workers=0))
    names = lambda ds: [ds.source.relpath(i) for i in range(len(ds))]
    # imgHQ0000k is file k + 1 (data256x256 counts from 00001); imgHQ00009 is in neither list.
    assert names(dm.val_set) == ["data256x256/00007.jpg", "data256x256/00009.jpg"]
    assert names(dm.train_set) == [f"data256x256/{i:05d}.jpg" for i in (1, 2, 3, 4, 5, 6, 8)]
    assert dm.num_classes is None and dm.provides_latents is False and dm.image_shape == (3, RES, RES)
    x, y = batches(dm.val_dataloader())
    check_images(x, 2)
    assert y.tolist() == [0, 0]


def test_split_lines_match_by_path_name_stem_or_celebahq_index():
    zero_based = SplitMatcher([f"celeba_hq_256/{i:05d}.jpg" for i in range(5)])
    assert zero_based.find("imgHQ00000.npy") == 0 and zero_based.find("imgHQ00004.npy") == 4
    assert zero_based.find("/home/me/data/celeba_hq_256/00003.jpg") == 3  # by file name
    assert zero_based.find("celeba_hq_256/00002.jpg") == 2 and zero_based.find("00001.png") == 1  # path; stem
    assert zero_based.find("imgHQ00005.npy") is None
    one_based = SplitMatcher([f"data256x256/{i:05d}.jpg" for i in range(1, 6)])
    assert one_based.find("imgHQ00000.npy") == 0 and one_based.find("imgHQ00004.npy") == 4
    assert SplitMatcher(["a/00005.jpg", "a/00006.jpg"]).find("imgHQ00000.npy") is None  # no known numbering
    with pytest.raises(ValueError, match="matches 2 images"):
        SplitMatcher(["a/1.jpg", "b/1.jpg"]).find("1.jpg")


def test_celebahq_split_list_errors_and_default_split(celeba_root, tmp_path):
    bad = tmp_path / "train.txt"
    bad.write_text("00001.jpg\nimgHQ00099.npy\n")
    files = {"train": str(bad), "val": str(celeba_root / "celebahqvalidation.txt")}
    with pytest.raises(
        DataNotFoundError, match=f"(?s)split file {re.escape(str(bad))}: 1 of 2 lines name no image.*imgHQ00099.npy"
    ):
        setup_dm(CelebAHQDataModule(str(celeba_root / "celebahq"), resolution=RES, split_files=files))
    overlap = tmp_path / "overlap.txt"
    overlap.write_text("00007.jpg\n")  # 00007.jpg is imgHQ00006, which the validation list holds
    with pytest.raises(ValueError, match="1 image.*in both split files"):
        setup_dm(
            CelebAHQDataModule(
                str(celeba_root / "celebahq"), resolution=RES, split_files={**files, "train": str(overlap)}
            )
        )
    with pytest.raises(ValueError, match="needs exactly"):
        CelebAHQDataModule(str(celeba_root), split_files={"training": "a", "val": "b"})
    # Without lists: val_size images from a seeded permutation, the same every time, disjoint from train.
    splits = []
    for _ in range(2):
        dm = setup_dm(CelebAHQDataModule(str(celeba_root / "celebahq"), resolution=RES, val_size=3, num_workers=0))
        splits.append([[ds.source.relpath(i) for i in range(len(ds))] for ds in (dm.train_set, dm.val_set)])
    train, val = splits[0]
    assert splits[0] == splits[1] and len(train) == 7 and len(val) == 3 and not set(train) & set(val)
    with pytest.raises(
        DataNotFoundError,
        match=f"(?s)data.root={re.escape(str(tmp_path / 'missing'))} does not exist.*data256x256/00001.jpg",
    ):
        CelebAHQDataModule(str(tmp_path / "missing")).prepare_data()


# --------------------------------------------------------------------------- LSUN


def test_lsun_lmdb_webp_and_jpeg_values(lsun_root, lsun_images):
    dm = setup_dm(LSUNDataModule(str(lsun_root), resolution=RES, num_workers=0, batch_size=3, random_flip=False))
    assert (len(dm.train_set), len(dm.val_set)) == (7, 3) and dm.num_classes is None
    x, y = batches(dm.train_dataloader())
    check_images(x, 6)  # drop_last: 7 images, batches of 3
    assert y.eq(0).all()
    # Keys come back in lmdb's sorted order; WebP (lossless) decodes exactly, JPEG closely.
    keys = list(lsun_images)
    for index in range(len(dm.train_set)):
        key = dm.train_set.source.key(index)
        expected = ImageTransform(RES)(lsun_images[key].copy())
        tolerance = 0.1 if keys.index(key) % 3 == 0 else 1e-6
        torch.testing.assert_close(dm.train_set[index][0], expected, atol=tolerance, rtol=0)
    assert sorted(dm.train_set.source.key(i) for i in range(7)) == [dm.train_set.source.key(i) for i in range(7)]
    # A copy sent to a spawned worker carries no open environment and reads the same images.
    torch.testing.assert_close(pickle.loads(pickle.dumps(dm.val_set))[2][0], dm.val_set[2][0])


def test_lsun_two_workers_match_zero(lsun_root):
    # The first loader reads in this process, so the workers of the second inherit an open
    # environment of the same database: they must still open and read their own.
    kwargs = dict(resolution=RES, batch_size=2, random_flip=False)
    x0, _ = batches(setup_dm(LSUNDataModule(str(lsun_root), num_workers=0, **kwargs)).val_dataloader())
    x2, _ = batches(setup_dm(LSUNDataModule(str(lsun_root), num_workers=2, **kwargs)).val_dataloader())
    check_images(x0, 3)
    torch.testing.assert_close(x0, x2)


def test_lsun_key_cache_is_written_reused_and_refreshed(lsun_root, tmp_path):
    database = tmp_path / "church_outdoor_train_lmdb"
    shutil.copytree(lsun_root / "church_outdoor_train_lmdb", database)
    keys = lmdb_keys(database)
    cache = key_cache_path(database)
    assert len(keys) == 7 and cache == tmp_path / "church_outdoor_train_lmdb_keys.txt"
    lines = cache.read_text().splitlines()
    assert lines[0].startswith("# lmdb keys v1 hex size=") and [bytes.fromhex(k) for k in lines[1:]] == keys
    cache.write_text("\n".join(lines[:3]) + "\n")  # a doctored cache with the right stamp is believed
    assert lmdb_keys(database) == keys[:2]
    cache.write_text("# lmdb keys v1 hex size=1 mtime_ns=1\n" + lines[1] + "\n")  # a stale one is not
    assert lmdb_keys(database) == keys
    cache.unlink()
    cache.mkdir()  # the cache cannot be written: the keys are still listed, in memory
    assert lmdb_keys(database) == keys and not list(tmp_path.glob("*.tmp"))


def test_lsun_bad_values_skip_or_error_naming_the_key(tmp_path, lsun_images, caplog):
    keys = sorted(lsun_images)[:5]  # lmdb lists keys sorted: keys[i] is entry i
    items = {k: lsun_value(i, lsun_images[k]) for i, k in enumerate(keys)}
    items[keys[1]] = b"RIFF\x00\x00\x00\x00WEBPnot an image"
    write_lmdb(tmp_path / "church_outdoor_train_lmdb", dict(list(items.items())[:4]))
    write_lmdb(tmp_path / "church_outdoor_val_lmdb", {keys[4]: items[keys[4]]})
    kwargs = dict(resolution=RES, num_workers=0, random_flip=False)
    train = setup_dm(LSUNDataModule(str(tmp_path), **kwargs)).train_set
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(train[1][0], train[2][0])
    assert f"church_outdoor_train_lmdb[{keys[1].decode()}]" in caplog.text
    strict = setup_dm(LSUNDataModule(str(tmp_path), on_corrupt="error", **kwargs)).train_set
    strict[0]
    with pytest.raises(UnreadableImageError, match=f"church_outdoor_train_lmdb\\[{keys[1].decode()}\\]"):
        strict[1]


def test_lsun_folder_export_and_layout_errors(tmp_path, lsun_images):
    export = tmp_path / "church_outdoor_train"
    for key, image in lsun_images.items():
        (export / key[:2].decode()).mkdir(parents=True, exist_ok=True)
        image.save(export / key[:2].decode() / f"{key.decode()}.webp", lossless=True)
    dm = setup_dm(LSUNDataModule(str(tmp_path), resolution=RES, val_size=2, num_workers=0))
    assert (len(dm.train_set), len(dm.val_set)) == (8, 2)
    check_images(batches(dm.val_dataloader())[0], 2)
    with pytest.raises(
        DataNotFoundError,
        match=f"(?s)data.root={re.escape(str(tmp_path / 'none'))} does not exist.*church_outdoor_train_lmdb",
    ):
        LSUNDataModule(str(tmp_path / "none")).prepare_data()
    other = tmp_path / "other"
    (other / "bedroom_train_lmdb").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="(?s)has no church_outdoor_train_lmdb.*it has bedroom_train_lmdb"):
        LSUNDataModule(str(other)).prepare_data()
    (other / "church_outdoor_train_lmdb").mkdir()
    with pytest.raises(DataNotFoundError, match="(?s)church_outdoor_train_lmdb has no data.mdb.*Expected layout"):
        LSUNDataModule(str(other)).prepare_data()


def test_lsun_root_may_be_the_database_itself(lsun_root):
    dm = setup_dm(LSUNDataModule(str(lsun_root / "church_outdoor_train_lmdb"), resolution=RES, num_workers=0))
    assert (len(dm.train_set), len(dm.val_set)) == (7, 3)  # the sibling _val_lmdb validates


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_batches_decode_exactly(cifar_root):
    dm = setup_dm(CIFAR10DataModule(str(cifar_root), random_flip=False, batch_size=4, num_workers=0))
    assert (len(dm.train_set), len(dm.val_set)) == (20, 6)
    assert dm.num_classes == 10 and dm.class_names[9] == "truck" and dm.image_shape == (3, 32, 32)
    x, y = batches(dm.val_dataloader())
    check_images(x, 6, 32)
    raw = read_pickle(cifar_root / "cifar-10-batches-py" / "test_batch")
    # b"data" rows are the red, green and blue 32x32 planes.
    expected = torch.from_numpy(raw[b"data"].reshape(6, 3, 32, 32)).float() / 127.5 - 1
    torch.testing.assert_close(x, expected)
    assert y.tolist() == raw[b"labels"] and y.dtype == torch.int64
    # The folder itself works as root too.
    assert len(setup_dm(CIFAR10DataModule(str(cifar_root / "cifar-10-batches-py"), num_workers=0)).train_set) == 20


def test_cifar10_flips_are_seeded_and_workers_match(cifar_root):
    dm = setup_dm(CIFAR10DataModule(str(cifar_root), random_flip=True, batch_size=4, num_workers=0))
    plain = torch.stack([dm.train_set.images[i].float() / 127.5 - 1 for i in range(20)])
    draws = []
    for _ in range(2):
        dm = setup_dm(CIFAR10DataModule(str(cifar_root), random_flip=True, batch_size=4, num_workers=0))
        torch.manual_seed(0)
        draws.append(torch.stack([dm.train_set[i][0] for i in range(20)]))
    torch.testing.assert_close(draws[0], draws[1])
    flipped = [bool((draws[0][i] == plain[i].flip(-1)).all()) for i in range(20)]
    unchanged = [bool((draws[0][i] == plain[i]).all()) for i in range(20)]
    assert all(f or u for f, u in zip(flipped, unchanged, strict=True)) and 0 < sum(flipped) < 20
    x0, _ = batches(setup_dm(CIFAR10DataModule(str(cifar_root), batch_size=4, num_workers=0)).val_dataloader())
    x2, _ = batches(setup_dm(CIFAR10DataModule(str(cifar_root), batch_size=4, num_workers=2)).val_dataloader())
    torch.testing.assert_close(x0, x2)


def test_flips_follow_the_worker_seed(cifar_root):
    dm = setup_dm(CIFAR10DataModule(str(cifar_root), random_flip=True, num_workers=2, persistent_workers=False))
    plain = torch.stack([dm.train_set.images[i].float() / 127.5 - 1 for i in range(20)])
    dm.train_set[0]  # the main process makes its generator before the workers fork: they must not share it
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=5, num_workers=2)  # unshuffled

    def flips(seed: int) -> list[bool]:
        torch.manual_seed(seed)
        images = torch.cat([batch[0] for batch in loader])
        assert all(bool((images[i] == plain[i]).all() or (images[i] == plain[i].flip(-1)).all()) for i in range(20))
        return [bool((images[i] != plain[i]).any()) for i in range(20)]

    first = flips(0)
    assert flips(0) == first and flips(1) != first  # reproducible from torch's seed, and driven by it
    # Batches 0 and 2 come from worker 0, 1 and 3 from worker 1: the workers draw different flips.
    assert first[0:5] != first[5:10]


@pytest.mark.parametrize("name", ["cifar10", "lsun"])
def test_training_flips_are_keyed_by_seed_epoch_and_index(name, cifar_root, lsun_root, monkeypatch):
    """Through the DataModule's training loader (workers or none), each image is flipped as
    ``train_set[AugmentationKey(index, seed, epoch)]`` says, which no worker seed changes."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "13")  # the run's seed, as seed_everything leaves it

    def make(workers: int):
        common = dict(random_flip=True, batch_size=2, num_workers=workers, persistent_workers=workers > 0)
        if name == "cifar10":
            return setup_dm(CIFAR10DataModule(str(cifar_root), **common))
        return setup_dm(LSUNDataModule(str(lsun_root), resolution=RES, **common))

    dm = make(0)
    count = len(dm.train_set) // 2 * 2
    expected = []
    for epoch in range(2):
        order = epoch_permutation(len(dm.train_set), 13, epoch)[:count].tolist()
        expected.append(torch.stack([dm.train_set[AugmentationKey(i, 13, epoch)][0] for i in order]))
    plain = torch.stack([dm.train_set.load(i) if name == "lsun" else dm.train_set.images[i] / 127.5 - 1 for i in order])
    flipped = [
        bool(torch.equal(x, p.flip(-1)) and not torch.equal(x, p)) for x, p in zip(expected[1], plain, strict=True)
    ]
    assert 0 < sum(flipped) < count  # some flipped, some not
    for workers in (0, 2):
        torch.manual_seed(workers)  # other worker seeds
        loader = make(workers).train_dataloader()
        for epoch in range(2):
            torch.testing.assert_close(batches(loader)[0], expected[epoch], rtol=0, atol=0)
    assert not torch.equal(expected[0].sort(0).values, expected[1].sort(0).values)  # flips change with the epoch


def test_cifar10_errors(cifar_root, tmp_path):
    with pytest.raises(
        DataNotFoundError,
        match=f"(?s)CIFAR-10 not found in data.root={re.escape(str(tmp_path))}.*data_batch_1 ... data_batch_5",
    ):
        CIFAR10DataModule(str(tmp_path), download=False).prepare_data()
    partial = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_root / "cifar-10-batches-py", partial)
    (partial / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="holds only batches.meta, data_batch_1, data_batch_2, data_batch_4"):
        CIFAR10DataModule(str(tmp_path)).prepare_data()
    bad_shape = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (partial / "data_batch_3").write_bytes(pickle.dumps(bad_shape, protocol=2))  # Python 3's protocol 2 reads too
    with pytest.raises(ValueError, match=r"data_batch_3: b'data' must be uint8 of shape \(N, 3072\)"):
        setup_dm(CIFAR10DataModule(str(tmp_path), num_workers=0))
    # A pickle that would run code is refused, not executed.
    (partial / "data_batch_3").write_bytes(pickle.dumps(print))
    with pytest.raises(ValueError, match="data_batch_3.*refusing to load builtins.print"):
        read_pickle(partial / "data_batch_3")


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "option,root,cls",
    [
        ("cifar10", "cifar", CIFAR10DataModule),
        ("celebahq", "celeba", CelebAHQDataModule),
        ("lsun", "lsun", LSUNDataModule),
        ("image_folder", "odd", ImageFolderDataModule),
    ],
)
def test_data_configs_compose_and_instantiate(option, root, cls, tmp_path, request):
    path = {"cifar": "cifar_root", "celeba": "celeba_root", "lsun": "lsun_root", "odd": "odd_folder"}[root]
    cfg = compose_config("train", tmp_path, [f"data={option}", f"data.root={request.getfixturevalue(path)}"])
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, cls) and dm.provides_latents is False
    assert dm.num_workers == 2 and dm.persistent_workers and dm.pin_memory == torch.accelerator.is_available()
    if option != "cifar10":
        assert dm.image_shape == (3, 256, 256) and dm.on_corrupt == "skip" and dm.small_images == "upscale"


# --------------------------------------------------------------------------- bad databases and archives


def test_lmdb_that_is_not_lmdb_or_not_of_images_is_refused_clearly(tmp_path):
    garbage = tmp_path / "garbage" / "church_outdoor_train_lmdb"
    garbage.mkdir(parents=True)
    (garbage / "data.mdb").write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(DataNotFoundError, match="(?s)church_outdoor_train_lmdb cannot be read as an lmdb database.*"):
        LSUNDataModule(str(tmp_path / "garbage")).prepare_data()
    # Another project's layout: a length key and pickled arrays. Every value would be "corrupt".
    other = tmp_path / "other" / "church_outdoor_train_lmdb"
    other.parent.mkdir()
    write_lmdb(other, {b"length": b"2", b"000000": pickle.dumps(np.zeros(3)), b"000001": pickle.dumps(np.ones(3))})
    with pytest.raises(
        DataNotFoundError, match=r"(?s)not one of images: the values of its first 3 key\(s\).*000000.*Expected layout"
    ):
        LSUNDataModule(str(tmp_path / "other")).prepare_data()
    empty = tmp_path / "empty" / "church_outdoor_train_lmdb"
    empty.parent.mkdir()
    write_lmdb(empty, {})
    with pytest.raises(DataNotFoundError, match="(?s)church_outdoor_train_lmdb holds no images.*Expected layout"):
        LSUNDataModule(str(tmp_path / "empty")).prepare_data()


def test_unreadable_zip_is_refused_clearly(celeba_root, tmp_path):
    truncated = tmp_path / "data256x256.zip"
    truncated.write_bytes((celeba_root / "data256x256.zip").read_bytes()[:-40])  # loses the central directory
    with pytest.raises(DataNotFoundError, match=r"(?s)data256x256.zip is not a readable zip file.*celeba_hq_256/00000"):
        CelebAHQDataModule(str(truncated), resolution=RES).prepare_data()


# --------------------------------------------------------------------------- workers and DDP


def _module(option: str, request, workers: int):
    """Each image DataModule on its fixture, unflipped, with ``workers`` loader processes."""
    common = dict(num_workers=workers, batch_size=2, random_flip=False, persistent_workers=False)
    if option == "cifar10":
        return CIFAR10DataModule(str(request.getfixturevalue("cifar_root")), resolution=RES, **common)
    if option == "celebahq":
        return CelebAHQDataModule(
            str(request.getfixturevalue("celeba_root") / "celebahq"), resolution=RES, val_size=3, **common
        )
    if option == "lsun":
        return LSUNDataModule(str(request.getfixturevalue("lsun_root")), resolution=RES, **common)
    if option == "image_folder":  # holds the truncated file: skipping must not depend on the worker
        return ImageFolderDataModule(
            str(request.getfixturevalue("odd_folder")), resolution=RES, val_fraction=0.4, **common
        )
    from spectral_diffusion.data import FashionMNISTDataModule

    return FashionMNISTDataModule(str(request.getfixturevalue("fmnist_root")), download=False, **common)


@pytest.mark.parametrize("option", ["cifar10", "celebahq", "lsun", "image_folder", "fashion_mnist"])
def test_two_workers_give_the_same_data_as_zero(option, request):
    loaded = []
    for workers in (0, 2):
        dm = setup_dm(_module(option, request, workers))
        torch.manual_seed(0)  # the training loader's shuffling is drawn in this process
        loaded.append((batches(dm.train_dataloader()), batches(dm.val_dataloader())))
    for (x0, y0), (x2, y2) in zip(loaded[0], loaded[1], strict=True):
        assert len(x0) > 0
        torch.testing.assert_close(x0, x2, rtol=0, atol=0)
        assert y0.tolist() == y2.tolist()


@pytest.mark.parametrize("count,world", [(10, 2), (10, 3), (7, 4), (3, 3), (0, 2), (1000, 8)])
def test_unpadded_sampler_reads_every_sample_exactly_once(count, world):
    dataset = list(range(count))
    shares = [list(UnpaddedDistributedSampler(dataset, num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for share in shares for i in share) == dataset  # the union, each once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert [len(UnpaddedDistributedSampler(dataset, num_replicas=world, rank=r)) for r in range(world)] == [
        len(s) for s in shares
    ]
    # torch's sampler, which Lightning would put in, repeats samples whenever world does not divide count.
    padded = [i for r in range(world) for i in DistributedSampler(dataset, world, r, shuffle=False)]
    assert len(padded) == (count + world - 1) // world * world


def test_unpadded_sampler_refuses_fewer_samples_than_ranks():
    with pytest.raises(ValueError, match="evaluation set has 2 samples, fewer than the 3 processes"):
        UnpaddedDistributedSampler(list(range(2)), num_replicas=3, rank=0)


def test_validation_loader_is_sharded_without_padding_under_ddp(lsun_root, monkeypatch):
    dm = setup_dm(LSUNDataModule(str(lsun_root), resolution=RES, num_workers=0, batch_size=2))
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)  # no process group: a plain loader
    everything, _ = batches(dm.val_dataloader())
    shards = []
    for rank in range(2):
        monkeypatch.setattr(base, "distributed_world", lambda rank=rank: (2, rank))
        loader = dm.val_dataloader()
        # A DistributedSampler already: Lightning's _requires_distributed_sampler leaves it alone.
        assert isinstance(loader.sampler, UnpaddedDistributedSampler) and isinstance(loader.sampler, DistributedSampler)
        shards.append(batches(loader)[0])
    assert [len(s) for s in shards] == [1, 2]  # 3 images: no fourth, repeated one
    torch.testing.assert_close(torch.cat(shards), everything)


def test_distributed_world_without_a_process_group():
    assert base.distributed_world() == (1, 0)
    assert base.BaseDataModule.eval_sampler(list(range(5))) is None


# --------------------------------------------------------------------------- CIFAR-10 at other resolutions


def test_cifar10_resizes_like_the_other_data_sets(cifar_root):
    dm = setup_dm(CIFAR10DataModule(str(cifar_root), resolution=RES, random_flip=False, num_workers=0, batch_size=3))
    assert dm.image_shape == (3, RES, RES)
    x, y = batches(dm.val_dataloader())
    check_images(x, 6)
    raw = read_pickle(cifar_root / "cifar-10-batches-py" / "test_batch")[b"data"].reshape(6, 3, 32, 32)
    expected = torch.stack([ImageTransform(RES)(Image.fromarray(image.transpose(1, 2, 0))) for image in raw])
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert y.dtype == torch.int64
    assert setup_dm(CIFAR10DataModule(str(cifar_root), resolution=64, num_workers=0)).train_set[0][0].shape == (
        3,
        64,
        64,
    )
    with pytest.raises(ImageTooSmallError, match="CIFAR-10's images are 32x32, smaller than data.resolution=64"):
        CIFAR10DataModule(str(cifar_root), resolution=64, small_images="error")
    with pytest.raises(ValueError, match="data.resolution=0 must be a positive integer"):
        CIFAR10DataModule(str(cifar_root), resolution=0)


# --------------------------------------------------------------------------- train.py on every data set


@pytest.mark.parametrize(
    "option,fixture,extra",
    [
        ("cifar10", "cifar_root", []),
        ("celebahq", "celeba_root", ["data.val_size=3"]),
        ("lsun", "lsun_root", []),
        ("image_folder", "odd_folder", ["data.val_fraction=0.2"]),
    ],
)
def test_train_runs_two_steps_on_each_data_set(option, fixture, extra, tmp_path, request):
    from train import train

    root = request.getfixturevalue(fixture)
    root = root / "data256x256.zip" if option == "celebahq" else root
    cfg = compose_config(
        "train",
        tmp_path,
        [
            "debug=tiny",
            "model=cifar10_small",
            "model.image_size=16",
            f"data={option}",
            f"data.root={root}",
            "data.resolution=16",
            "data.num_workers=0",
            "trainer.max_steps=2",
            "callbacks.sample_grid.every_n_steps=0",
            "callbacks.progress=null",
            "logger=csv",
            *extra,
        ],
    )
    metric = train(cfg)
    assert isinstance(metric, float) and np.isfinite(metric)  # val/loss over real validation images
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2


def test_cifar10_download_goes_through_torchvision_into_root(cifar_root, tmp_path, monkeypatch):
    """data.download=true: prepare_data has torchvision fetch the archive into data.root, once."""
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:  # stands in for the network download: extracts the same files
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            shutil.copytree(cifar_root / "cifar-10-batches-py", Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(DataNotFoundError, match="CIFAR-10 not found"):
        CIFAR10DataModule(str(tmp_path), download=False).prepare_data()
    assert not calls
    dm = setup_dm(CIFAR10DataModule(str(tmp_path), download=True, num_workers=0))
    assert calls == [(str(tmp_path), True, True)] and len(dm.train_set) == 20
    CIFAR10DataModule(str(tmp_path), download=True).prepare_data()  # already there: no second download
    assert len(calls) == 1
