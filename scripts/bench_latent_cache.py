"""Time training batches from cached latents against encoding every batch on the fly.

    python scripts/bench_latent_cache.py [--batches 100] [--batch-size 64] [--repeats 3]

Both pipelines yield the same batches: the normalised latents of the same Fashion-MNIST training
images, in the same order. The first stage is an *untrained* KLAutoencoder of the
``configs/model/autoencoder/fmnist_kl_f4.yaml`` preset (32x32 -> 4x8x8): the encoder's cost does
not depend on its weights, and the benchmark should not need a training run first. Its latent
stats are estimated on the images, as ``scripts/encode_latents.py`` does.

- on the fly: ``DataLoader`` over the image dataset (``num_workers=0``, as the data config), then
  ``first_stage.encode`` under ``no_grad``;
- cached: ``LatentDataModule``'s loader over a store written once by ``write_latent_store``
  (the one-time encoding is reported separately).

Each repeat runs both pipelines over all batches, in turn; the median per pipeline is reported,
with the largest difference between their batches.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from spectral_diffusion.autoencoders import KLFirstStage, estimate_latent_stats
from spectral_diffusion.data import FashionMNISTDataModule
from spectral_diffusion.data.latents import LatentBatches, LatentStore, write_latent_store

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "model" / "autoencoder" / "fmnist_kl_f4.yaml"


def on_the_fly(first_stage: KLFirstStage, dataset, batches: list[list[int]]):
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=0)
    with torch.no_grad():
        for images, labels in loader:
            yield first_stage.encode(images), labels


def cached(store: LatentStore, batches: list[list[int]]):
    # Entries are the same images in data-set order, so a batch's indices address both pipelines alike.
    loader = DataLoader(LatentBatches(store, np.arange(len(store))), sampler=batches, batch_size=None)
    yield from loader


def timed(pipeline) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor]]]:
    start = time.perf_counter()
    out = list(pipeline)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST IDX folder (default: the usual places)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    datamodule = FashionMNISTDataModule(root=args.data_root, download=False)
    datamodule.setup("fit")
    dataset = datamodule.train_set
    count = args.batches * args.batch_size
    if count > len(dataset):
        parser.error(f"{args.batches} batches of {args.batch_size} need {count} images; the data has {len(dataset)}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0)).tolist()
    batches = [order[i : i + args.batch_size] for i in range(0, count, args.batch_size)]

    first_stage = KLFirstStage(hydra.utils.instantiate(OmegaConf.load(PRESET)), source=f"untrained {PRESET.name}")
    subset = torch.utils.data.Subset(dataset, range(count))
    first_stage.set_latent_stats(*estimate_latent_stats(first_stage, DataLoader(subset, batch_size=256), 2048))

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = write_latent_store(
            Path(tmp) / "store", first_stage, DataLoader(subset, batch_size=256), dtype=args.dtype
        )
        encode_s = time.perf_counter() - start
        store = LatentStore(path)

        fly_times, cache_times, max_diff = [], [], 0.0
        for _ in range(args.repeats):
            fly_s, fly = timed(on_the_fly(first_stage, dataset, batches))
            cache_s, cache = timed(cached(store, batches))
            fly_times.append(fly_s)
            cache_times.append(cache_s)
            for (z_fly, y_fly), (z_cache, y_cache) in zip(fly, cache, strict=True):
                if not torch.equal(y_fly, y_cache):
                    raise AssertionError("the two pipelines yielded different labels")
                max_diff = max(max_diff, (z_fly - z_cache).abs().max().item())

    fly_s, cache_s = statistics.median(fly_times), statistics.median(cache_times)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.batches} batches"
    )
    print(
        f"store: {count} images -> {args.dtype} latents {tuple(store.meta['shape'])}, written once in {encode_s:.2f} s"
    )
    print(f"| pipeline | s per epoch of batches (median of {args.repeats}) | ms per batch |")
    print("|---|---|---|")
    print(f"| encode on the fly | {fly_s:.3f} | {1000 * fly_s / args.batches:.2f} |")
    print(f"| cached latents ({args.dtype}) | {cache_s:.3f} | {1000 * cache_s / args.batches:.2f} |")
    print(f"speed-up: {fly_s / cache_s:.1f}x; largest difference between the batches: {max_diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
