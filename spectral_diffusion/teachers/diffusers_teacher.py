"""Teachers from diffusers: LDMs laid out like ``CompVis/ldm-celebahq-256`` and pixel DDPMs.

Expected layout (a local directory or a hub id)::

    unet/        UNet2DModel (config.json + weights)       -- or the UNet at the top level
    scheduler/   scheduler_config.json (DDPM/DDIM/...)      -- or scheduler_config.json at the top
    vqvae/       VQModel        (LDM-4 style latent space)  -- optional
    vae/         AutoencoderKL  (LDM-8 style latent space)  -- optional

``google/ddpm-cifar10-32`` (pixel space, no autoencoder) and ``CompVis/ldm-celebahq-256`` (VQ-f4
latents) both load. The teacher's latent normalisation follows diffusers' pipelines: LDMPipeline
feeds the raw VQ latents to the UNet, so the default is no scaling; a pipeline that multiplies by
``vae.config.scaling_factor`` (Stable-Diffusion style) is matched with ``latent_scaling_factor``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.teachers.base import Teacher
from spectral_diffusion.utils.errors import UserError

log = logging.getLogger(__name__)

#: diffusers' scheduler names for our schedules and parameterisations.
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
LAYOUT_HELP = (
    "expected a diffusers model laid out as unet/ (UNet2DModel) + scheduler/ (scheduler_config.json), "
    "optionally with vqvae/ (VQModel) or vae/ (AutoencoderKL), like CompVis/ldm-celebahq-256; or a UNet2DModel "
    "config.json and scheduler_config.json at the top level, like google/ddpm-cifar10-32"
)


class TeacherLoadError(UserError, RuntimeError):
    """A teacher could not be loaded (the message names the path and the expected layout)."""


def diffusion_from_scheduler_config(config: dict[str, Any], source: str = "scheduler") -> GaussianDiffusion:
    """Our :class:`GaussianDiffusion` equivalent of a diffusers scheduler config."""
    if config.get("trained_betas") is not None:
        raise TeacherLoadError(f"{source}: schedulers with explicit trained_betas are not supported")
    schedule = config.get("beta_schedule", "linear")
    prediction = config.get("prediction_type", "epsilon")
    if schedule not in BETA_SCHEDULES:
        raise TeacherLoadError(f"{source}: beta_schedule={schedule!r} is not one of {sorted(BETA_SCHEDULES)}")
    if prediction not in PREDICTION_TYPES:
        raise TeacherLoadError(f"{source}: prediction_type={prediction!r} is not one of {sorted(PREDICTION_TYPES)}")
    return GaussianDiffusion(
        schedule=BETA_SCHEDULES[schedule],
        num_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
        prediction_type=PREDICTION_TYPES[prediction],
    )


def _is_local(path: str) -> bool:
    return Path(path).expanduser().exists()


def _components(path: str) -> set[str]:
    """The component folders of a local directory or a hub repository (from model_index.json)."""
    if _is_local(path):
        root = Path(path).expanduser()
        if not root.is_dir():
            raise TeacherLoadError(f"teacher.path={path} is a file, not a directory; {LAYOUT_HELP}")
        return {p.name for p in root.iterdir() if p.is_dir()}
    try:
        from huggingface_hub import hf_hub_download

        index = json.loads(Path(hf_hub_download(path, "model_index.json")).read_text())
    except Exception as err:  # offline, no such repo, or no model_index.json
        log.info("no model_index.json for %s (%s); assuming a top-level UNet", path, err)
        return set()
    return {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}


def _load_unet(path: str, subfolder: str | None, torch_dtype: torch.dtype | None):
    from diffusers import UNet2DModel

    try:
        return UNet2DModel.from_pretrained(path, subfolder=subfolder, torch_dtype=torch_dtype)
    except Exception as err:
        where = f"{path}/{subfolder}" if subfolder else path
        raise TeacherLoadError(f"cannot load a UNet2DModel from {where}: {err}\n{LAYOUT_HELP}") from err


def _load_scheduler_config(path: str, subfolder: str | None) -> dict[str, Any]:
    from diffusers import DDPMScheduler

    try:
        return dict(DDPMScheduler.load_config(path, subfolder=subfolder))
    except Exception as err:
        where = f"{path}/{subfolder}" if subfolder else path
        raise TeacherLoadError(f"cannot read the scheduler config in {where}: {err}\n{LAYOUT_HELP}") from err


def _unet_output(net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None):
    out = net(x_t, t, class_labels=class_labels).sample
    # UNets with learned variance output 2C channels: the mean parameterisation comes first.
    return out[:, : x_t.shape[1]] if out.shape[1] == 2 * x_t.shape[1] else out


def load_diffusers_teacher(
    path: str,
    autoencoder: bool = True,
    latent_scaling_factor: float | None = None,
    torch_dtype: str | None = None,
) -> Teacher:
    """Load a diffusers UNet2DModel teacher, its scheduler and (if present) its autoencoder.

    Args:
        path: local directory or hub id (see the module doc for the layout).
        autoencoder: also load ``vqvae/`` or ``vae/`` as the teacher's first stage.
        latent_scaling_factor: the factor the teacher's pipeline multiplies raw latents by
            (``None``: none, as LDMPipeline).
        torch_dtype: e.g. ``bfloat16`` to halve a large teacher's memory on GPUs.
    """
    dtype = getattr(torch, torch_dtype) if torch_dtype else None
    components = _components(path)
    unet_sub = "unet" if "unet" in components else None
    scheduler_sub = "scheduler" if "scheduler" in components else None
    if not _is_local(path) and not components:
        unet_sub, scheduler_sub = "unet", "scheduler"  # unknown hub layout: try the LDM one first
        try:
            net = _load_unet(path, unet_sub, dtype)
        except TeacherLoadError:
            unet_sub, scheduler_sub = None, None
            net = _load_unet(path, None, dtype)
    else:
        net = _load_unet(path, unet_sub, dtype)
    diffusion = diffusion_from_scheduler_config(
        _load_scheduler_config(path, scheduler_sub), source=f"{path}/{scheduler_sub or ''}scheduler_config.json"
    )

    first_stage, first_stage_config = None, None
    if autoencoder:
        sub = "vqvae" if "vqvae" in components else "vae" if "vae" in components else None
        if sub is not None:
            from spectral_diffusion.autoencoders import DiffusersAutoencoder

            first_stage_config = {
                "_target_": "spectral_diffusion.autoencoders.DiffusersAutoencoder",
                "path": path,
                "subfolder": sub,
                "kind": "vq" if sub == "vqvae" else "kl",
            }
            first_stage = DiffusersAutoencoder(path, subfolder=sub, kind=first_stage_config["kind"])
            channels = first_stage.latent_channels
            scale = 1.0 / latent_scaling_factor if latent_scaling_factor else 1.0
            first_stage.set_latent_stats(torch.zeros(channels), torch.full((channels,), scale))

    size = net.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return Teacher(
        net=net,
        call=_unet_output,
        diffusion=diffusion,
        input_shape=(net.config.in_channels, *size),
        num_classes=net.config.num_class_embeds,
        first_stage=first_stage,
        source=f"diffusers:{path}",
        first_stage_config=first_stage_config,
    )
