"""Spectral report: how well a model's x0 prediction recovers each frequency band, per timestep.

For held-out images ``x0`` (in the space the model denoises: pixels, or latents of its first
stage), each timestep ``t`` of a list, and a fixed noise per image, ``x_t`` is formed, the model
predicts ``x̂0(x_t, t)`` (clipped to the data range when the sampler clips, as sampling
uses it; raw otherwise), and the error is split by frequency:

- **radial FFT bands**: ``|FFT(x̂0 - x0)|²`` summed over the frequencies whose radius
  ``sqrt(fx² + fy²)`` (cycles per pixel) falls in each of ``num_bands`` equal bands of [0, 0.5]
  (the corners beyond 0.5 join the last band), divided by the same sum for ``|FFT(x0)|²``: the
  **relative error** of a band. 0 is perfect; ~1 means the band is not recovered at all (an
  MMSE predictor outputs the mean there).
- **DWT sub-bands** (single-level Haar, ``networks/wavelets.py``): the same ratio for LL, LH, HL
  and HH (the transform is orthogonal, so the energies add up to the total).

It is computed for the student, for the teacher when one is given, and between the two
(``student_vs_teacher``: the student's deviation from the teacher's prediction, relative to the
data's energy). ``recovery_timestep`` is, per band, the largest timestep of the list at which the
relative error is below ``threshold``: the Spectral Diffusion paper's observation is that low
bands are recovered early in sampling (at large t) and high bands late (small t), and a slim
model's high bands stay worse than its teacher's (``student_over_teacher``, per band and t).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.networks.wavelets import dwt2_stacked

DWT_BANDS = ("LL", "LH", "HL", "HH")


def radial_band_masks(height: int, width: int, num_bands: int) -> tuple[torch.Tensor, list[float]]:
    """Boolean masks ``(num_bands, H, W)`` over FFT frequencies, and the band edges in cycles/pixel."""
    if num_bands < 1:
        raise ValueError(f"spectral.num_bands must be >= 1, got {num_bands}")
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[None, :]
    radius = (fy**2 + fx**2).sqrt()
    edges = torch.linspace(0, 0.5, num_bands + 1, dtype=torch.float64)
    band = torch.bucketize(radius, edges[1:-1], right=True).clamp(max=num_bands - 1)
    masks = torch.stack([band == b for b in range(num_bands)])
    return masks, edges.tolist()


def fft_band_energy(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``|FFT2(x)|²`` of ``(N, C, H, W)`` summed over images, channels and each band: ``(num_bands,)``, float64."""
    power = torch.fft.fft2(x.double()).abs().square().sum(dim=(0, 1))  # (H, W)
    return (masks.to(power.device) * power).sum(dim=(1, 2)).cpu()


def dwt_band_energy(x: torch.Tensor) -> torch.Tensor:
    """Energy of each single-level Haar sub-band (LL, LH, HL, HH) of ``(N, C, H, W)``, summed: ``(4,)``."""
    return dwt2_stacked(x.double(), "haar").square().sum(dim=(0, 2, 3, 4)).cpu()


def _add(totals: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    totals[name] = totals[name] + value if name in totals else value


@torch.no_grad()
def spectral_errors(
    models: dict[str, ModelBundle],
    x0: torch.Tensor,
    timesteps: Sequence[int],
    labels: torch.Tensor | None = None,
    num_bands: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    threshold: float = 0.5,
    clip_x0: float | None = None,
) -> dict[str, Any]:
    """The report's numbers (module doc) for ``x0`` ``(N, C, H, W)`` in the models' common space.

    ``clip_x0`` clips the predictions to ``[-clip_x0, clip_x0]`` as a sampler with ``clip_sample``
    does (at large t an eps-prediction's raw x0 is the noise amplified by ``1 / sqrt(alpha_bar)``);
    ``None`` keeps them raw.

    ``models`` maps a name (``student``, ``teacher``) to a model; with exactly those two names the
    comparison between them is added. Image ``i`` gets noise from ``Generator().manual_seed(seed + i)``,
    the same for every model and timestep.
    """
    if x0.ndim != 4 or len(x0) < 1:
        raise ValueError(f"spectral report: x0 must be a non-empty (N, C, H, W) batch, got {tuple(x0.shape)}")
    for name, model in models.items():
        if tuple(model.shape) != tuple(x0.shape[1:]):
            raise ValueError(f"spectral report: {name} denoises {model.shape} but the data is {tuple(x0.shape[1:])}")
        if max(timesteps) >= model.diffusion.num_timesteps or min(timesteps) < 0:
            raise ValueError(
                f"spectral.timesteps={list(timesteps)} must lie in [0, {model.diffusion.num_timesteps}) for {name}"
            )
    masks, edges = radial_band_masks(x0.shape[-2], x0.shape[-1], num_bands)
    noise = torch.cat(
        [torch.randn((1, *x0.shape[1:]), generator=torch.Generator().manual_seed(seed + i)) for i in range(len(x0))]
    )
    data_fft, data_dwt = fft_band_energy(x0, masks), dwt_band_energy(x0)
    compare = {"student", "teacher"} <= models.keys()
    result: dict[str, Any] = {
        "timesteps": [int(t) for t in timesteps],
        "band_edges": edges,
        "dwt_bands": list(DWT_BANDS),
        "num_images": len(x0),
        "seed": seed,
        "threshold": threshold,
        "clip_x0": clip_x0,
        "models": {name: {"fft_relative_error": [], "dwt_relative_error": [], "mse": []} for name in models},
    }
    if compare:
        result["student_vs_teacher"] = {"fft_relative_error": [], "dwt_relative_error": []}
    for t in timesteps:
        totals: dict[str, torch.Tensor] = {}
        for start in range(0, len(x0), batch_size):
            clean = x0[start : start + batch_size].to(device)
            eps = noise[start : start + batch_size].to(device)
            y = None if labels is None else labels[start : start + batch_size].to(device)
            predictions = {}
            for name, model in models.items():
                t_batch = torch.full((len(clean),), int(t), device=device, dtype=torch.long)
                x_t = model.diffusion.add_noise(clean, eps, t_batch)
                predicted, _ = model.diffusion.predict_x0_eps(model.network(x_t, t_batch, y).float(), x_t, t_batch)
                if clip_x0 is not None:
                    predicted = predicted.clamp(-clip_x0, clip_x0)
                predictions[name] = predicted
                error = predicted - clean
                _add(totals, f"{name}/fft", fft_band_energy(error, masks))
                _add(totals, f"{name}/dwt", dwt_band_energy(error))
                _add(totals, f"{name}/se", error.double().square().sum().cpu())
            if compare:
                gap = predictions["student"] - predictions["teacher"]
                _add(totals, "gap/fft", fft_band_energy(gap, masks))
                _add(totals, "gap/dwt", dwt_band_energy(gap))
        for name in models:
            entry = result["models"][name]
            entry["fft_relative_error"].append((totals[f"{name}/fft"] / data_fft).tolist())
            entry["dwt_relative_error"].append((totals[f"{name}/dwt"] / data_dwt).tolist())
            entry["mse"].append(float(totals[f"{name}/se"] / x0.numel()))
        if compare:
            result["student_vs_teacher"]["fft_relative_error"].append((totals["gap/fft"] / data_fft).tolist())
            result["student_vs_teacher"]["dwt_relative_error"].append((totals["gap/dwt"] / data_dwt).tolist())
    for entry in result["models"].values():
        entry["recovery_timestep"] = recovery_timesteps(result["timesteps"], entry["fft_relative_error"], threshold)
    if compare:
        student = torch.tensor(result["models"]["student"]["fft_relative_error"])
        teacher = torch.tensor(result["models"]["teacher"]["fft_relative_error"])
        result["student_over_teacher"] = (student / teacher).tolist()
    return result


def recovery_timesteps(
    timesteps: Sequence[int], errors: Sequence[Sequence[float]], threshold: float
) -> list[int | None]:
    """Per band, the largest timestep whose relative error is below ``threshold`` (``None``: never)."""
    bands = len(errors[0])
    return [
        max((t for t, row in zip(timesteps, errors, strict=True) if row[b] < threshold), default=None)
        for b in range(bands)
    ]


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def plot_report(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """PNG: relative error per FFT band (one curve per timestep), per DWT sub-band, and a heatmap.

    The heatmap is the student's error relative to the teacher's when a teacher is in the report,
    else the student's relative error itself.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, TwoSlopeNorm

    timesteps = report["timesteps"]
    edges = report["band_edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    colours = plt.get_cmap("viridis")([i / max(len(timesteps) - 1, 1) for i in range(len(timesteps))])
    has_teacher = "teacher" in report["models"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), dpi=110)

    ax = axes[0]
    for i, t in enumerate(timesteps):
        ax.plot(
            centres, report["models"]["student"]["fft_relative_error"][i], "-o", ms=3, color=colours[i], label=f"t={t}"
        )
        if has_teacher:
            ax.plot(centres, report["models"]["teacher"]["fft_relative_error"][i], "--", color=colours[i], alpha=0.8)
    ax.axhline(report["threshold"], color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("radial frequency (cycles / pixel)")
    ax.set_ylabel("relative error of x0 prediction")
    ax.set_title("per FFT band: student solid" + (", teacher dashed" if has_teacher else ""))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)

    ax = axes[1]
    styles = {"LL": "tab:blue", "LH": "tab:orange", "HL": "tab:green", "HH": "tab:red"}
    for b, band in enumerate(report["dwt_bands"]):
        ax.plot(
            timesteps,
            [row[b] for row in report["models"]["student"]["dwt_relative_error"]],
            "-o",
            ms=3,
            color=styles[band],
            label=f"{band} student",
        )
        if has_teacher:
            ax.plot(
                timesteps,
                [row[b] for row in report["models"]["teacher"]["dwt_relative_error"]],
                "--",
                color=styles[band],
                label=f"{band} teacher",
            )
    ax.set_yscale("log")
    ax.set_xlabel("timestep t (sampling runs from right to left)")
    ax.set_ylabel("relative error")
    ax.set_title("per Haar DWT sub-band")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)

    ax = axes[2]
    labels = [f"{a:.2f}" for a in centres]
    if has_teacher:
        ratio = torch.tensor(report["student_over_teacher"]).log2()
        limit = max(float(ratio.abs().max()), 0.1)
        image = ax.imshow(ratio.numpy(), aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit))
        fig.colorbar(image, ax=ax, label="log2(student error / teacher error)")
        ax.set_title("where the student loses (red) against the teacher")
    else:
        values = torch.tensor(report["models"]["student"]["fft_relative_error"]).clamp(min=1e-6)
        image = ax.imshow(values.numpy(), aspect="auto", cmap="magma", norm=LogNorm())
        fig.colorbar(image, ax=ax, label="relative error")
        ax.set_title("student relative error")
    ax.set_yticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set_xticks(range(len(centres)), labels, rotation=45, fontsize=7)
    ax.set_xlabel("radial frequency (cycles / pixel)")
    ax.set_ylabel("timestep t")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def held_out_images(datamodule: Any, num_images: int, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` images (in [-1, 1]) and labels of a DataModule's split."""
    from spectral_diffusion.evaluation.reference import split_dataset

    dataset = split_dataset(datamodule, split)
    count = min(num_images, len(dataset))
    images, labels = zip(*(dataset[i] for i in range(count)), strict=True)
    return torch.stack(images), torch.as_tensor([int(label) for label in labels])


def log_band_summary(report: dict[str, Any]) -> str:
    """A few lines for the console: recovery timestep per band for each model."""
    edges = report["band_edges"]
    lines = [f"spectral report: largest t with relative error < {report['threshold']:.2f}, per band"]
    lines.append("band (cyc/px): " + " ".join(f"{a:.2f}-{b:.2f}" for a, b in zip(edges[:-1], edges[1:], strict=True)))
    for name, entry in report["models"].items():
        lines.append(f"{name}: " + " ".join("-" if t is None else str(t) for t in entry["recovery_timestep"]))
    return "\n".join(lines)
