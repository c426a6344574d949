"""Splitting sample indices over ranks and bringing the results back together.

Rank ``r`` of ``W`` generates samples ``r, r + W, r + 2W, ...``: every index exactly once, no
padding, so no duplicate is ever counted (a ``DistributedSampler`` would pad to equal shares).
Fréchet statistics are merged exactly from per-rank float64 sums (:meth:`FeatureStatistics.merge`);
features (for KID) are gathered with their indices and put back in index order, so the result is
the same as on one process. Without an initialised process group everything is a single rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from spectral_diffusion.evaluation.frechet import FeatureStatistics


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_indices(num_samples: int, rank: int, world_size: int) -> list[int]:
    """The sample indices rank ``rank`` of ``world_size`` generates: ``rank, rank + W, ...``."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    return list(range(rank, num_samples, world_size))


def _device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo takes CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def merge_statistics(stats: FeatureStatistics) -> FeatureStatistics:
    """The statistics of all ranks merged (every rank gets the result); ``stats`` itself on one rank."""
    _, world_size = world()
    if world_size == 1:
        return stats
    gathered: list[dict | None] = [None] * world_size
    state = stats.state_dict()
    dist.all_gather_object(gathered, state)
    merged = FeatureStatistics(stats.dim, stats.extractor, stats.metadata)
    for other in gathered:
        merged.merge(FeatureStatistics.from_state_dict(other))
    return merged


def gather_features(indices: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, features)`` of all ranks, sorted by sample index (every rank gets them).

    Ranks may hold different numbers of rows: each pads to the largest count for ``all_gather``
    and the padding is dropped again, so nothing is duplicated.
    """
    _, world_size = world()
    if world_size == 1:
        order = indices.argsort()
        return indices[order], features[order]
    device = _device()
    count = torch.tensor([len(features)], device=device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    largest = int(max(c.item() for c in counts))
    padded = torch.zeros(largest, features.shape[1] + 1, dtype=torch.float64, device=device)
    padded[: len(features), 0] = indices.to(device=device, dtype=torch.float64)
    padded[: len(features), 1:] = features.to(device=device, dtype=torch.float64)
    parts = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    rows = torch.cat([part[: int(c.item())] for part, c in zip(parts, counts, strict=True)]).cpu()
    rows = rows[rows[:, 0].argsort()]
    return rows[:, 0].long(), rows[:, 1:].to(features.dtype)
