"""Guidance truncation sweep: sampling speed against quality as guidance stops earlier.

For each cut-off ``truncate_after`` (the fraction of the sampling steps that run classifier-free
guidance; after it one network call per step), :func:`guidance_sweep` generates the same
class-balanced samples (sample ``i`` has class ``i % num_classes`` and its own noise stream
of ``(seed, i)``, so every cut-off sees the same noise and labels), times the generation, and measures

- ``fd``: the Fréchet distance of the samples' features to reference statistics (FID with
  Inception features; FD with the offline Fashion-MNIST classifier's);
- ``class_accuracy``: how often a classifier (for Fashion-MNIST, the same classifier's logits)
  predicts the class that was asked for, i.e. how well the samples follow their condition.

It writes ``guidance_sweep.md`` (a table), ``guidance_sweep.json`` (the rows and settings) and
``guidance_sweep.png`` (FD and accuracy against samples/s, each point labelled with its cut-off).
Speed-up and FD change are given relative to full guidance (``truncate_after = 1``) when the sweep
contains it. Typical use with the Fashion-MNIST classifier (``extractor``)::

    rows = guidance_sweep(model.network, sampler, model.shape, model.num_classes,
                          extractor, reference_stats, extractor.classifier,
                          scale=3.0, num_samples=2000, output_dir=out, decode=model.decode)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance
from spectral_diffusion.diffusion.samplers import Sampler, sample
from spectral_diffusion.evaluation.frechet import FeatureStatistics
from spectral_diffusion.evaluation.generation import sample_labels, sample_noise
from spectral_diffusion.evaluation.throughput import synchronize

log = logging.getLogger(__name__)

DEFAULT_CUTOFFS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Columns of the markdown table: (row key, header, format).
TABLE_COLUMNS = (
    ("truncate_after", "truncate_after", "{:.2f}"),
    ("guided_steps", "guided steps", "{:d}"),
    ("network_evaluations", "network evals", "{:d}"),
    ("samples_per_s", "samples/s", "{:.2f}"),
    ("speedup", "speed-up vs full", "{:.2f}x"),
    ("fd", "FD", "{:.3f}"),
    ("fd_change_pct", "FD change vs full", "{:+.1f}%"),
    ("class_accuracy", "class accuracy", "{:.3f}"),
)


def _module_device(module: Callable, fallback: torch.device) -> torch.device:
    if isinstance(module, nn.Module):
        parameter = next(module.parameters(), None)
        if parameter is not None:
            return parameter.device
    return fallback


def _check_settings(cutoffs: Sequence[float], num_samples: int, batch_size: int, num_classes: int) -> None:
    if not cutoffs:
        raise ValueError("guidance_sweep: cutoffs is empty; give fractions in [0, 1], e.g. [0, 0.25, 0.5, 0.75, 1]")
    bad = [c for c in cutoffs if not 0.0 <= float(c) <= 1.0]
    if bad:
        raise ValueError(f"guidance_sweep: cutoffs must be fractions in [0, 1], got {bad}")
    if num_samples < 2:
        raise ValueError(f"guidance_sweep: num_samples must be >= 2 for a covariance, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"guidance_sweep: batch_size must be >= 1, got {batch_size}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"guidance_sweep needs a class-conditional network: num_classes={num_classes!r}")


def _generate_batch(
    denoiser: Callable,
    sampler: Sampler,
    shape: tuple[int, ...],
    indices: range,
    num_classes: int,
    seed: int,
    guidance: ClassifierFreeGuidance,
    device: torch.device,
    decode: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (decoded, clamped to [-1, 1]) and labels of samples ``indices``, each seeded by its index."""
    labels = sample_labels(indices, num_classes)
    x = sample(
        denoiser,
        sampler,
        (len(indices), *shape),
        sample_noise(seed, indices),
        device,
        class_labels=labels.to(device),
        guidance=guidance,
    )
    images = decode(x) if decode is not None else x
    return images.clamp(-1, 1), labels


def _evaluate_cutoff(
    cutoff: float,
    denoiser: Callable,
    sampler: Sampler,
    shape: tuple[int, ...],
    num_classes: int,
    feature_extractor: Callable[[torch.Tensor], torch.Tensor],
    extractor_name: str,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None,
    guidance: ClassifierFreeGuidance,
    num_samples: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    decode: Callable[[torch.Tensor], torch.Tensor] | None,
    warmup: bool,
) -> tuple[dict[str, Any], FeatureStatistics]:
    """One row of the sweep: time the generation (only), then features and classification."""
    if warmup:  # lazy initialisation, kernel selection, allocator growth: not part of the timing
        _generate_batch(
            denoiser, sampler, shape, range(min(batch_size, num_samples)), num_classes, seed, guidance, device, decode
        )
    stats = FeatureStatistics(extractor=extractor_name)
    correct, seconds = 0, 0.0
    classifier_device = _module_device(classifier, device) if classifier is not None else device
    for start in range(0, num_samples, batch_size):
        indices = range(start, min(start + batch_size, num_samples))
        synchronize(device)
        began = time.perf_counter()
        images, labels = _generate_batch(denoiser, sampler, shape, indices, num_classes, seed, guidance, device, decode)
        synchronize(device)
        seconds += time.perf_counter() - began
        with torch.no_grad():
            stats.update(feature_extractor(images))
            if classifier is not None:
                logits = classifier(images.to(classifier_device))
                correct += int((logits.argmax(dim=1).cpu() == labels).sum())
    num_steps = len(sampler.timesteps)
    row = {
        "truncate_after": float(cutoff),
        "guided_steps": sum(guidance.is_guided(i, num_steps) for i in range(num_steps)),
        "steps": num_steps,
        "network_evaluations": guidance.network_evaluations(num_steps),
        "num_samples": num_samples,
        "seconds": seconds,
        "samples_per_s": num_samples / seconds,
        "class_accuracy": correct / num_samples if classifier is not None else None,
    }
    return row, stats


def guidance_sweep(
    denoiser: Callable,
    sampler: Sampler,
    shape: tuple[int, ...],
    num_classes: int,
    feature_extractor: Callable[[torch.Tensor], torch.Tensor],
    reference: FeatureStatistics,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
    scale: float = 3.0,
    after: str = "uncond",
    batch_cond_uncond: bool = False,
    num_samples: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
    device: torch.device | str = "cpu",
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    warmup: bool = True,
    output_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Sweep the guidance cut-off and return one row per cut-off (also written to ``output_dir``).

    Args:
        denoiser: the class-conditional network ``(x_t, t, class_labels) -> output`` (EMA weights,
            eval mode, on ``device``); label ``num_classes`` is its null label.
        sampler: the sampler and step count to measure (e.g. DDIM or DPM-Solver++ at 50 steps).
        shape: ``(C, H, W)`` of what the denoiser denoises (a latent with a first stage).
        num_classes: the network's number of classes; samples are class-balanced.
        feature_extractor: images ``(N, C, H, W)`` in [-1, 1] -> features ``(N, d)``. Its
            ``identity`` (or ``name``) attribute must match ``reference.extractor``.
        reference: feature statistics of real images (e.g. the test split), same extractor.
        classifier: images -> logits ``(N, num_classes)`` for the class accuracy; None skips it.
        cutoffs: the values of ``guidance.truncate_after`` to measure.
        scale, after, batch_cond_uncond: the guidance settings (see ``ClassifierFreeGuidance``).
        num_samples, batch_size, seed: samples per cut-off, per batch, and the base seed.
        decode: maps the sampler's output to images (a first stage's decoder); None in pixel space.
        warmup: generate one untimed batch before timing each cut-off.
        output_dir: where to write ``guidance_sweep.{md,json,png}``; None writes nothing.

    Returns:
        Rows with ``truncate_after``, ``guided_steps``, ``steps``, ``network_evaluations``,
        ``num_samples``, ``seconds``, ``samples_per_s``, ``fd``, ``class_accuracy`` and, when
        the cut-offs include 1.0, ``speedup`` and ``fd_change_pct`` relative to full guidance.
    """
    _check_settings(cutoffs, num_samples, batch_size, num_classes)
    device = torch.device(device)
    extractor_name = getattr(feature_extractor, "identity", None) or getattr(feature_extractor, "name", "")
    if extractor_name != reference.extractor:
        raise ValueError(
            f"guidance_sweep: the reference statistics were computed with extractor {reference.extractor!r}, "
            f"but the feature extractor is {extractor_name!r}; recompute the reference with this extractor"
        )
    rows = []
    for cutoff in cutoffs:
        guidance = ClassifierFreeGuidance(
            scale=scale, truncate_after=float(cutoff), after=after, batch_cond_uncond=batch_cond_uncond
        )
        row, stats = _evaluate_cutoff(
            cutoff,
            denoiser,
            sampler,
            shape,
            num_classes,
            feature_extractor,
            extractor_name,
            classifier,
            guidance,
            num_samples,
            batch_size,
            seed,
            device,
            decode,
            warmup,
        )
        row["fd"] = stats.frechet_distance(reference)
        log.info(
            "truncate_after=%.2f: %.2f samples/s, FD %.3f, class accuracy %s",
            cutoff,
            row["samples_per_s"],
            row["fd"],
            row["class_accuracy"],
        )
        rows.append(row)
    add_relative_columns(rows)
    if output_dir is not None:
        settings = {
            "guidance": {"scale": scale, "after": after, "batch_cond_uncond": batch_cond_uncond},
            "cutoffs": [float(c) for c in cutoffs],
            "sampler": f"{type(sampler).__name__}({len(sampler.timesteps)} steps)",
            "num_samples": num_samples,
            "batch_size": batch_size,
            "seed": seed,
            "device": str(device),
            "feature_extractor": extractor_name,
            "reference_count": reference.count,
        }
        write_sweep(rows, settings, Path(output_dir))
    return rows


def add_relative_columns(rows: list[dict[str, Any]]) -> None:
    """``speedup`` and ``fd_change_pct`` of every row against the full-guidance row (cut-off 1), if any."""
    full = next((r for r in rows if r["truncate_after"] == 1.0), None)
    for row in rows:
        row["speedup"] = row["samples_per_s"] / full["samples_per_s"] if full else None
        row["fd_change_pct"] = 100.0 * (row["fd"] / full["fd"] - 1.0) if full and full["fd"] > 0 else None


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (missing values shown as a dash)."""
    header = "| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |"
    rule = "|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> Path:
    """FD and class accuracy against samples/s, each point labelled with its cut-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = [r["samples_per_s"] for r in rows]
    panels = [("fd", "FD (lower is better)")]
    if any(r.get("class_accuracy") is not None for r in rows):
        panels.append(("class_accuracy", "class accuracy"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        values = [r[key] for r in rows]
        ax.plot(speed, values, "o-")
        for x, y, r in zip(speed, values, rows, strict=True):
            ax.annotate(f"{r['truncate_after']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.margins(0.12)
        ax.set_xlabel("samples/s")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("guidance truncation (labels: truncate_after)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_sweep(rows: list[dict[str, Any]], settings: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    """Write ``guidance_sweep.md``, ``.json`` and ``.png`` into ``output_dir``; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: output_dir / f"guidance_sweep.{ext}" for ext in ("md", "json", "png")}
    described = ", ".join(f"{k}={v}" for k, v in settings.items())
    paths["md"].write_text(f"Guidance truncation sweep ({described}).\n\n" + sweep_table(rows))
    paths["json"].write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    plot_sweep(rows, paths["png"])
    return paths
