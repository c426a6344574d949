"""Inpaint or outpaint an image with a trained checkpoint: ``python scripts/inpaint.py ckpt_path=... image=...``.

    python scripts/inpaint.py ckpt_path=logs/train/quickstart/checkpoints/last.ckpt \
        image=shirt.png mask=right_half method=newton num_samples=4

The config is ``configs/inpaint.yaml`` (with the ``sampler`` group of ``evaluate.py``). The model
is rebuilt from the checkpoint (EMA weights, its stored config and first stage); the image is
brought to the model's size and channels (``fit=``); ``mask`` names the region to generate. Next
to the image (or in ``output_dir``) it writes

- ``<stem>_<method>_result.png``: the completed images at the model's size, side by side, no borders;
- ``<stem>_mask.png``: the mask at the model's size, white where generated;
- ``<stem>_<method>_grid.png``: input | mask | masked input (grey hole) | results, enlarged;

and ``metrics.json`` in the run directory: PSNR on the known region per sample, time, settings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image

from spectral_diffusion.assembly import ConfigError, build_sampler, load_run
from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.diffusion.constrained import METHODS, NewtonSettings, network_calls_per_step
from spectral_diffusion.inpainting import (
    NAMED_HOLES,
    decoded_shape,
    fit_hole,
    inpaint,
    known_mask,
    load_image,
    mask_image,
    masked_psnr,
    named_hole,
    read_hole_image,
)
from spectral_diffusion.utils.cli import report_user_errors, run
from spectral_diffusion.utils.images import make_grid, save_grid
from spectral_diffusion.utils.run import git_revision, register_resolvers, task_wrapper

log = logging.getLogger("inpaint")
register_resolvers()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(cfg: DictConfig, device: torch.device) -> ModelBundle:
    """The checkpoint's network (EMA weights unless use_ema=false), process and first stage, frozen."""
    model = load_run(cfg.ckpt_path, use_ema=cfg.use_ema).to(device)
    if model.diffusion is None:
        raise ConfigError(f"{cfg.ckpt_path} holds no diffusion config to sample with; was it written by train.py?")
    model.network.requires_grad_(False)  # dps differentiates with respect to x_t only
    return model


def hole_for(spec: str, original_size: tuple[int, int], size: int, fit: str) -> torch.Tensor:
    """The ``(1, 1, size, size)`` hole mask (1 = generate) that ``mask=spec`` describes."""
    if spec in NAMED_HOLES:
        return named_hole(spec, size, size)
    hole = read_hole_image(spec, size=original_size)
    return fit_hole(hole, size, fit)


def class_labels_for(cfg: DictConfig, num_classes: int | None, n: int, device: torch.device) -> torch.Tensor | None:
    label = cfg.get("class_label")
    if num_classes is None:
        if label is not None:
            raise ConfigError(f"class_label={label} was given but the checkpoint's model is unconditional")
        return None
    if label is None:
        raise ConfigError(f"the model is class-conditional: give class_label=0..{num_classes - 1}")
    if not isinstance(label, int) or not 0 <= label < num_classes:
        raise ConfigError(
            f"class_label={label!r} is out of range: this model has {num_classes} classes, 0..{num_classes - 1}"
        )
    return torch.full((n,), label, dtype=torch.long, device=device)


def save_row(images: torch.Tensor, path: Path) -> Path:
    """Images in [-1, 1] side by side at their own resolution, without borders (a single image as is)."""
    grid = make_grid(images, nrow=len(images), padding=0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def check_config(cfg: DictConfig) -> None:
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "give the checkpoint to inpaint with: ckpt_path=PATH (e.g. logs/train/<run>/checkpoints/last.ckpt)"
        )
    if not cfg.get("image"):
        raise ConfigError("give the image to complete: image=PATH")
    if cfg.method not in METHODS:
        raise ConfigError(f"method={cfg.method!r} is not one of {list(METHODS)}")
    if int(cfg.num_samples) < 1:
        raise ConfigError(f"num_samples must be >= 1, got {cfg.num_samples}")


@task_wrapper
def run_inpaint(cfg: DictConfig) -> dict[str, Any]:
    """Complete ``cfg.image`` where ``cfg.mask`` says; returns the metrics written to ``metrics.json``."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    model = load_model(cfg, device)
    channels, size, _ = decoded_shape(model.shape, model.first_stage)

    image_path = Path(cfg.image).expanduser()
    image, original_size = load_image(image_path, channels, size, cfg.fit)
    hole = hole_for(str(cfg.mask), original_size, size, cfg.fit)
    known = known_mask(hole)
    n = int(cfg.num_samples)
    labels = class_labels_for(cfg, model.num_classes, n, device)

    sampler = build_sampler(cfg.sampler, model.diffusion)
    newton = NewtonSettings(**cfg.newton)
    generators = [torch.Generator().manual_seed(int(cfg.seed) + i) for i in range(n)]
    images = image.to(device).expand(n, -1, -1, -1).contiguous()
    start = time.perf_counter()
    result = inpaint(
        model.network,
        sampler,
        images,
        known.to(device),
        method=cfg.method,
        first_stage=model.first_stage,
        generator=generators,
        class_labels=labels,
        newton=newton,
        dps_scale=float(cfg.dps.scale),
        latent_mask_threshold=float(cfg.latent_mask_threshold),
        paste_known=bool(cfg.paste_known),
    )
    seconds = time.perf_counter() - start
    completed = result.images.cpu()
    psnr = masked_psnr(completed, image.expand_as(completed), known)

    out_dir = Path(cfg.output_dir).expanduser() if cfg.get("output_dir") else image_path.parent
    stem = image_path.stem
    masked_input = image * known  # the hole shows as mid-grey (0)
    mask_rgb = mask_image(hole).expand(-1, channels, -1, -1)
    scale = max(1, 128 // size)
    files = {
        "result_png": save_row(completed, out_dir / f"{stem}_{cfg.method}_result.png"),
        "mask_png": save_row(mask_image(hole), out_dir / f"{stem}_mask.png"),
        "grid_png": save_grid(
            torch.cat([image, mask_rgb, masked_input, completed]),
            out_dir / f"{stem}_{cfg.method}_grid.png",
            nrow=3 + n,
            scale=scale,
        ),
    }
    steps = sampler.num_inference_steps
    metrics: dict[str, Any] = {
        "ckpt_path": model.source.removeprefix("checkpoint:"),
        "weights": model.weights,
        "image": str(image_path.resolve()),
        "mask": str(cfg.mask),
        "method": cfg.method,
        "sampler": f"{type(sampler).__name__}({steps} steps)",
        "network_calls": steps * network_calls_per_step(cfg.method, newton),
        "latent": model.first_stage is not None,
        "num_samples": n,
        "sampling_s": seconds,
        # inf (an exact match, e.g. method=replace in pixel space) is written as the string "inf"
        "psnr_known_db": [round(float(p), 3) if torch.isfinite(p) else "inf" for p in psnr],
        **{k: str(v) for k, v in files.items()},
        "device": str(device),
        "git_commit": git_revision()["commit"],
    }
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for key, value in metrics.items():
        print(f"{key:<16} {value}")
    return metrics


@hydra.main(version_base="1.3", config_path="../configs", config_name="inpaint")
@report_user_errors
def main(cfg: DictConfig) -> None:
    run_inpaint(cfg)


if __name__ == "__main__":
    run(main)
