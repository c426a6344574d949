"""The metrics of ``evaluate.py``, one function per group, each returning ``metrics.json`` entries.

- :func:`cost_metrics`: ``params_m``, ``first_stage_params_m``, ``gmacs``, ``gmacs_per_sample``,
  ``gmacs_decoder``, ``gmacs_per_sample_total``;
- :func:`quality_metrics`: ``fid`` (or ``fd_fmnist`` for the offline extractor), ``kid_mean``,
  ``kid_std``, with the protocol that produced them;
- :func:`student_over_teacher`: ratios of a student's numbers to its teacher's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance
from spectral_diffusion.diffusion.samplers import Sampler
from spectral_diffusion.evaluation.cost import (
    attention_product_ops,
    count_params,
    decoder_gmacs,
    gmacs_by_op,
    network_calls_per_sample,
)
from spectral_diffusion.evaluation.distributed import rank_indices, world
from spectral_diffusion.evaluation.features import FeatureSet, combine_ranks, extract
from spectral_diffusion.evaluation.generation import generate
from spectral_diffusion.evaluation.kid import kernel_inception_distance

log = logging.getLogger(__name__)

#: Below this many samples a Fréchet distance is not comparable with published FID-50k/10k numbers.
MIN_COMPARABLE_SAMPLES = 10_000


def cost_metrics(
    model: ModelBundle,
    sampler: Sampler | None,
    guidance: ClassifierFreeGuidance | float | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Parameters and GMACs of one forward pass, of one generated sample, and of the decoder."""
    by_op = gmacs_by_op(model.network, model.shape, model.class_conditional, device)
    gmacs = sum(by_op.values())
    metrics: dict[str, Any] = {
        "params_m": count_params(_network(model)) / 1e6,
        "gmacs": gmacs,
        # Part of gmacs spent in attention's QK^T and AV products (often left out of quoted figures).
        "gmacs_attention_products": attention_product_ops(by_op),
    }
    if sampler is not None:
        calls = network_calls_per_sample(sampler.num_inference_steps, guidance)
        metrics["network_calls_per_sample"] = calls
        metrics["gmacs_per_sample"] = calls * gmacs
    if model.first_stage is not None:
        metrics["first_stage_params_m"] = count_params(model.first_stage) / 1e6
        metrics["gmacs_decoder"] = decoder_gmacs(model.first_stage, model.shape, device)
    else:
        metrics["first_stage_params_m"] = 0.0
        metrics["gmacs_decoder"] = 0.0
    if "gmacs_per_sample" in metrics:
        metrics["gmacs_per_sample_total"] = metrics["gmacs_per_sample"] + metrics["gmacs_decoder"]
    return metrics


def _network(model: ModelBundle) -> nn.Module:
    # A Teacher wraps its network; count the network alone.
    return getattr(model.network, "net", model.network)


def generated_features(
    model: ModelBundle,
    sampler: Sampler,
    extractor: nn.Module,
    num_samples: int,
    seed: int,
    batch_size: int,
    device: torch.device | str,
    guidance: ClassifierFreeGuidance | float | None = None,
    keep_features: bool = False,
    grid_samples: int = 0,
    noise: str = "counter",
    quantize: str = "round",
) -> tuple[FeatureSet, torch.Tensor | None, float]:
    """Features of ``num_samples`` generated samples over all ranks, the first ``grid_samples`` images, seconds.

    This rank generates its share of the indices (:func:`rank_indices`); the statistics are merged
    and the features gathered across ranks, so every rank returns the same result.
    """
    rank, world_size = world()
    indices = rank_indices(num_samples, rank, world_size)
    grid: list[torch.Tensor] = []

    start = time.perf_counter()

    def batches():
        done = 0
        for chunk, images in generate(model, sampler, indices, seed, batch_size, device, guidance, noise=noise):
            if rank == 0 and sum(len(g) for g in grid) < grid_samples:
                grid.append(images[: grid_samples - sum(len(g) for g in grid)].cpu())
            done += len(chunk)
            if rank == 0:
                log.info("generated %d / %d samples on rank 0, %.0f s", done, len(indices), time.perf_counter() - start)
            yield chunk, images

    local = extract(batches(), extractor, keep_features, quantize=quantize)
    combined = combine_ranks(local)
    seconds = time.perf_counter() - start
    return combined, (torch.cat(grid) if grid else None), seconds


def quality_metrics(
    generated: FeatureSet,
    reference: FeatureSet,
    extractor: nn.Module,
    fid: bool,
    kid: dict[str, Any] | None,
    seed: int = 0,
) -> dict[str, Any]:
    """``fid`` / ``fd_fmnist`` and ``kid_mean`` / ``kid_std`` of generated against reference features."""
    metrics: dict[str, Any] = {}
    if generated.stats.count < MIN_COMPARABLE_SAMPLES:
        log.warning(
            "%s computed on %d samples: not comparable with published numbers (FID-50k, at least %d); "
            "use num_samples=50000 for reported results",
            extractor.metric_key,
            generated.stats.count,
            MIN_COMPARABLE_SAMPLES,
        )
    if fid:
        metrics[extractor.metric_key] = generated.stats.frechet_distance(reference.stats)
    if kid is not None:
        prefix = "kid" if extractor.metric_key == "fid" else f"kd_{extractor.metric_key.removeprefix('fd_')}"
        mean, std = kernel_inception_distance(
            generated.features, reference.features, kid["num_subsets"], kid["subset_size"], seed
        )
        metrics[f"{prefix}_mean"], metrics[f"{prefix}_std"] = mean, std
    return metrics


#: metrics whose student / teacher ratio is reported (when both have them).
RATIO_KEYS = (
    "params_m",
    "gmacs",
    "gmacs_per_sample",
    "gmacs_per_sample_total",
    "samples_per_s",
    "fid",
    "fd_fmnist",
    "kid_mean",
    "kd_fmnist_mean",
)


def student_over_teacher(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, float]:
    """``student[k] / teacher[k]`` for the :data:`RATIO_KEYS` both have (e.g. gmacs 0.12 = 8.5x fewer)."""
    return {
        key: student[key] / teacher[key]
        for key in RATIO_KEYS
        if isinstance(student.get(key), (int, float)) and isinstance(teacher.get(key), (int, float)) and teacher[key]
    }
