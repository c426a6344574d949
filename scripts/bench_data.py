"""Decode-and-augment throughput of the image data layouts: folder, zip, lmdb and LitData shards.

    python scripts/bench_data.py [--count 384] [--size 512x384] [--resolution 256] [--repeats 3]

Writes ``--count`` photo-like images of ``--size`` (default 512x384, a 4:3 photo: a central
384x384 crop is resized to 256x256) once as JPEG (quality 90) and once as WebP (quality 80), and
lays them out as the DataModules read them:

- ``folder``: ``ImageFolderDataModule`` over a folder of the JPEG files;
- ``zip``: ``ImageFolderDataModule`` over a zip of the same files (stored, as image archives are);
- ``lmdb``: ``LSUNDataModule`` over an lmdb database keyed as LSUN is, with the JPEG values, and
  again with the WebP values (LSUN's own format);
- ``shards``: ``StreamingDataModule`` (``data=streaming``) over LitData shards that
  ``data/shards.py`` wrote from the folder (the same JPEG bytes, ``--chunk-bytes`` chunks), read in place from
  the local directory; LitData's shuffle, the same decode, crop, resize and flips; and the same
  shards as a ``local:`` URI, LitData's stand-in for object storage, read through its cache
  directory (filled by the first epoch, which the warm-up of the first repeat mostly covers).

Each layout is read through its DataModule's training loader (shuffled, random flips, batches of
``--batch-size``) with 0 and 2 workers. One epoch is timed after a warm-up batch (which starts the
workers); the median of ``--repeats`` runs, the layouts taking turns within each repeat, is
reported as images per second, with the machine's load average before and after; with 0 workers
also images per CPU-second of the loading process, which does not depend on what else the machine
runs (an idle core would deliver about that many images per second). The files are
freshly written, so they are read from the page cache: this measures decoding and preprocessing,
not the disk.

"Photo-like" images: noise with the 1/f amplitude spectrum of natural images, a few hard-edged
shapes and a little per-pixel noise, so that JPEG and WebP spend about the bytes and decoding
work they spend on photographs (unlike flat colour, which compresses to almost nothing, or white
noise, which does not compress at all).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import statistics
import tempfile
import zipfile
from pathlib import Path

import lmdb
import numpy as np
import torch
from PIL import Image, ImageDraw

from spectral_diffusion.data import ImageFolderDataModule, LSUNDataModule
from spectral_diffusion.data.shards import write_shards
from spectral_diffusion.data.streaming import StreamingDataModule
from spectral_diffusion.data.throughput import time_loader


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """An RGB image with a natural image's 1/f amplitude spectrum, some edges and sensor noise."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height))
    channels = []
    base = rng.standard_normal((height, width // 2 + 1)) + 1j * rng.standard_normal((height, width // 2 + 1))
    for _ in range(3):  # correlated colour channels, as in photographs
        own = rng.standard_normal(base.shape) + 1j * rng.standard_normal(base.shape)
        field = np.fft.irfft2((base + 0.4 * own) * amplitude, s=(height, width))
        channels.append((field - field.mean()) / (field.std() + 1e-12))
    image = np.stack(channels, -1) * 40 + rng.uniform(70, 180, 3)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        box = (x0, y0, x0 + rng.integers(10, width // 3), y0 + rng.integers(10, height // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    noisy = np.asarray(picture, dtype=np.float64) + rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=90 if fmt == "JPEG" else 80)
    return buffer.getvalue()


def write_layouts(
    root: Path, count: int, width: int, height: int, seed: int, resolution: int, chunk_bytes: str
) -> dict[str, tuple[str, float]]:
    """Write the five layouts under ``root``; ``{name: (data.root, mean bytes per image)}``."""
    rng = np.random.default_rng(seed)
    folder = root / "folder"
    folder.mkdir()
    jpeg, webp = {}, {}
    for i in range(count):
        image = photo_like(rng, width, height)
        key = hashlib.sha1(str(i).encode()).hexdigest().encode()  # LSUN keys: 40 hex digits
        jpeg[key], webp[key] = encode(image, "JPEG"), encode(image, "WEBP")
        (folder / f"{i:05d}.jpg").write_bytes(jpeg[key])
    with zipfile.ZipFile(root / "images.zip", "w", zipfile.ZIP_STORED) as archive:
        for i, value in enumerate(jpeg.values()):
            archive.writestr(f"images/{i:05d}.jpg", value)
    for name, values in (("lmdb_jpeg", jpeg), ("lmdb_webp", webp)):
        size = sum(len(v) for v in values.values())
        (root / name).mkdir()
        env = lmdb.open(str(root / name / "bench_train_lmdb"), map_size=2 * size + (1 << 24))
        with env.begin(write=True) as txn:
            for key, value in values.items():
                txn.put(key, value)
        env.close()
    jpeg_bytes = statistics.mean(len(v) for v in jpeg.values())
    webp_bytes = statistics.mean(len(v) for v in webp.values())
    # The shards of the folder: its JPEG bytes as they are, through write_shards.py's code path.
    source = ImageFolderDataModule(str(folder), resolution=resolution, val_fraction=0, random_flip=False, num_workers=0)
    write_shards(
        source, str(root / "shards"), splits=("train",), chunk_bytes=chunk_bytes, num_workers=1, start_method="fork"
    )
    return {
        "folder (JPEG files)": (str(folder), jpeg_bytes),
        "zip (JPEG members, stored)": (str(root / "images.zip"), jpeg_bytes),
        "lmdb (JPEG values)": (str(root / "lmdb_jpeg"), jpeg_bytes),
        "lmdb (WebP values, as LSUN)": (str(root / "lmdb_webp"), webp_bytes),
        "LitData shards (JPEG bytes, local)": (str(root / "shards"), jpeg_bytes),
        "LitData shards (local: URI, via cache)": (f"local:{root / 'shards'}", jpeg_bytes),
    }


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def datamodule(layout: str, root: str, workers: int, args: argparse.Namespace):
    common = dict(
        resolution=args.resolution,
        random_flip=True,
        batch_size=args.batch_size,
        num_workers=workers,
        pin_memory=False,
        persistent_workers=False,
    )
    if layout.startswith("LitData"):
        # The shards were written at 256: data.resolution must be theirs (a mismatch is refused).
        # A local: URI is LitData's stand-in for object storage: chunks are copied into the cache first.
        cache = args.cache_dir if root.startswith("local:") else None
        dm = StreamingDataModule(root, validation="none", seed=args.seed, cache_dir=cache, **common)
    elif layout.startswith("lmdb"):
        dm = LSUNDataModule(root, category="bench", val_size=1, **common)
    else:
        dm = ImageFolderDataModule(root, val_fraction=0, **common)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=384, help="images per layout")
    parser.add_argument("--size", default="512x384", help="source image size WxH")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk-bytes",
        default="4MB",
        help="LitData chunk size of the shards: small enough that each loader worker gets several chunks of the "
        "small benchmark set, as it does of a real data set with write_shards.py's 64MB",
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        args.cache_dir = str(Path(tmp) / "litdata_cache")
        layouts = write_layouts(Path(tmp), args.count, width, height, args.seed, args.resolution, args.chunk_bytes)
        load_before = os.getloadavg()
        times: dict[tuple[str, int], list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for layout, (root, _) in layouts.items():
                for workers in args.workers:
                    dm = datamodule(layout, root, workers, args)
                    batches = len(dm.train_set) // args.batch_size - 1  # one epoch less the warm-up batch
                    result = time_loader(dm.train_dataloader(), batches)
                    times.setdefault((layout, workers), []).append(result["images_per_s"])
                    if workers == 0:
                        cpu.setdefault(layout, []).append(result["images"] / result["cpu_seconds"])
        load_after = os.getloadavg()

    print(
        f"{args.count} photo-like {width}x{height} images -> {args.resolution}x{args.resolution}, batch "
        f"{args.batch_size}, random flips; median of {args.repeats}; torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs ({cpu_name()}), "
        f"torch threads {torch.get_num_threads()}"
    )
    shown = lambda load: ", ".join(f"{v:.2f}" for v in load)  # noqa: E731
    print(f"load average (1, 5, 15 min): before {shown(load_before)}; after {shown(load_after)}")
    print()
    header = " | ".join(f"{w} workers (images/s)" for w in args.workers)
    extra = " images per CPU-second, 0 workers |" if cpu else ""
    print(f"| layout | bytes per image | {header} |{extra}")
    print("|---|---|" + "---|" * (len(args.workers) + bool(cpu)))
    for layout, (_, size) in layouts.items():
        cells = " | ".join(f"{statistics.median(times[(layout, w)]):.1f}" for w in args.workers)
        cpu_cell = f" {statistics.median(cpu[layout]):.1f} |" if cpu else ""
        print(f"| {layout} | {size / 1024:.1f} KiB | {cells} |{cpu_cell}")


if __name__ == "__main__":
    main()
