"""Timing a DataLoader: how many preprocessed images per second it delivers (inspect and bench scripts)."""

from __future__ import annotations

import time

from torch.utils.data import DataLoader


def time_loader(loader: DataLoader, batches: int) -> dict[str, float]:
    """Seconds to the first batch, then images per second over the next ``batches`` batches.

    The first batch is timed apart: it includes starting the worker processes (and, for
    zip and lmdb sources, opening them in each worker), a one-off cost that would swamp a short
    measurement. When the loader runs out it starts another epoch, so ``batches`` may exceed one
    epoch's. ``cpu_seconds`` is this process's CPU time over the timed batches: with
    ``num_workers=0`` the whole cost of decoding and preprocessing, which unlike wall time does not
    depend on what else the machine runs; with workers it leaves their work out.
    """
    if batches < 1:
        raise ValueError(f"batches={batches} must be a positive integer")
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    images, start, cpu_start = 0, time.perf_counter(), time.process_time()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        images += len(batch[0])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    del iterator  # stops non-persistent workers now rather than at garbage collection
    return {
        "first_batch_s": first,
        "images": images,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "images_per_s": images / seconds,
    }
