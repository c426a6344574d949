"""Sampling throughput: generated samples per second at the configured sampler and batch size.

One warm-up batch first (kernel selection, allocator, lazy initialisation), then ``repeats``
timed batches; the device is synchronised before the clock is read, so queued GPU work is
counted. A sample is the whole job: every sampler step and the first stage's decoder.
"""

from __future__ import annotations

import time

import torch

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance
from spectral_diffusion.diffusion.samplers import Sampler
from spectral_diffusion.evaluation.generation import generate


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "synchronize"):
        accelerator.synchronize(device)
    elif device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(
    model: ModelBundle,
    sampler: Sampler,
    batch_size: int,
    device: torch.device | str,
    repeats: int = 1,
    warmup: int = 1,
    guidance: ClassifierFreeGuidance | float | None = None,
) -> dict[str, float]:
    """``samples_per_s`` and ``s_per_batch`` of full sampling runs of ``batch_size`` samples."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"metrics.throughput: repeats must be >= 1 and warmup >= 0; got {repeats} and {warmup}")

    def run_batch(first: int) -> None:
        for _ in generate(model, sampler, range(first, first + batch_size), 0, batch_size, device, guidance):
            pass

    for i in range(warmup):
        run_batch(i * batch_size)
    synchronize(device)
    start = time.perf_counter()
    for i in range(repeats):
        run_batch((warmup + i) * batch_size)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"samples_per_s": repeats * batch_size / elapsed, "s_per_batch": elapsed / repeats}
