"""Two CPU processes (gloo): merged statistics and gathered features equal those of one process."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spectral_diffusion.evaluation.distributed import gather_features, merge_statistics, rank_indices
from spectral_diffusion.evaluation.frechet import FeatureStatistics

NUM_SAMPLES = 11  # not a multiple of the world size: shares of 6 and 5, no padding


def features_of(indices: list[int]) -> torch.Tensor:
    """Deterministic features of sample i (what an extractor would give for seed + i)."""
    return torch.stack(
        [torch.randn(3, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i in indices]
    )


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        indices = rank_indices(NUM_SAMPLES, rank, world_size)
        local = features_of(indices)
        stats = merge_statistics(FeatureStatistics(extractor="e").update(local))
        order, gathered = gather_features(torch.tensor(indices), local)
        torch.save({"mean": stats.mean, "cov": stats.covariance, "count": stats.count, "order": order,
                    "features": gathered}, f"{out}/rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch: ~10-25 s on a shared CPU
def test_two_ranks_give_the_single_process_result(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    everything = features_of(list(range(NUM_SAMPLES)))
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["count"] == NUM_SAMPLES and result["order"].tolist() == list(range(NUM_SAMPLES))
        torch.testing.assert_close(result["features"], everything)
        np.testing.assert_allclose(result["mean"].numpy(), everything.mean(0).numpy(), rtol=1e-12)
        np.testing.assert_allclose(result["cov"].numpy(), np.cov(everything.numpy(), rowvar=False), rtol=1e-10)
