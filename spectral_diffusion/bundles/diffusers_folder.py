"""A diffusers model folder as a :class:`ModelBundle`: LDMs laid out like ``CompVis/ldm-celebahq-256``, pixel DDPMs.

Expected layout (a local directory or a hub id)::

    unet/        UNet2DModel (config.json + weights)       -- or the UNet at the top level
    scheduler/   scheduler_config.json (DDPM/DDIM/...)      -- or scheduler_config.json at the top
    vqvae/       VQModel        (LDM-4 style latent space)  -- optional
    vae/         AutoencoderKL  (LDM-8 style latent space)  -- optional

``google/ddpm-cifar10-32`` (pixel space, no autoencoder) and ``CompVis/ldm-celebahq-256`` (VQ-f4
latents) both load, and so does a folder that ``scripts/export.py format=diffusers`` wrote: its
``unet/`` holds a ``SpectralUNet2DModel`` (unwrapped to the framework's UNet, so distillation finds
its features), its ``vae/`` may hold a ``SpectralAutoencoderKL``, ``model_index.json`` gives the
latent statistics, and ``spectral_diffusion_config.json`` the training run's config (checked as a
checkpoint's stored config is, so evaluate.py finds the run's data set). The latent normalisation follows diffusers' pipelines: LDMPipeline feeds the
raw VQ latents to the UNet, so the default is no scaling; a pipeline that multiplies by
``vae.config.scaling_factor`` (Stable-Diffusion style) is matched with ``latent_scaling_factor``.

The folder is untrusted input: a hub id is fetched as JSON and weights only, each component's
class is checked, safetensors are preferred and pickles are read with ``weights_only=True``
(``utils/diffusers_files.py``). Nothing in the folder decides which code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from spectral_diffusion.bundles.bundle import ModelBundle
from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.utils.diffusers_files import DiffusersFolderError, check_component, local_copy, read_config
from spectral_diffusion.utils.errors import UserError
from spectral_diffusion.utils.stored_config import check_stored_config

#: diffusers' scheduler names for our schedules and parameterisations.
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: The UNet classes a folder may hold.
UNET_CLASSES = ("UNet2DModel", "SpectralUNet2DModel")
#: What an exported folder stores the training run's config in (``export/diffusers_export.py``).
RUN_CONFIG_FILE = "spectral_diffusion_config.json"
#: And what was exported (source, step, EMA or raw weights).
EXPORT_RECORD = "export.json"
LAYOUT_HELP = (
    "expected a diffusers model laid out as unet/ (UNet2DModel) + scheduler/ (scheduler_config.json), "
    "optionally with vqvae/ (VQModel) or vae/ (AutoencoderKL), like CompVis/ldm-celebahq-256; or a UNet2DModel "
    "config.json and scheduler_config.json at the top level, like google/ddpm-cifar10-32; or a folder written by "
    "scripts/export.py format=diffusers (unet/ holding a SpectralUNet2DModel)"
)


class DiffusersLoadError(UserError, RuntimeError):
    """A diffusers model could not be loaded (the message names the path and the expected layout)."""


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` called as this framework's networks are: ``net(x_t, t, class_labels) -> tensor``.

    UNets with a learned variance output 2C channels; the mean parameterisation (the first C) is
    returned. ``in_channels``, ``image_size`` and ``num_classes`` mirror the framework's UNet.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        size = unet.config.sample_size
        self.in_channels = int(unet.config.in_channels)
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.num_classes = unet.config.num_class_embeds

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        out = self.unet(x_t, t, class_labels=class_labels).sample
        return out[:, : x_t.shape[1]] if out.shape[1] == 2 * x_t.shape[1] else out


def diffusion_from_scheduler_config(config: dict[str, Any], source: str = "scheduler") -> GaussianDiffusion:
    """Our :class:`GaussianDiffusion` equivalent of a diffusers scheduler config."""
    if config.get("trained_betas") is not None:
        raise DiffusersLoadError(f"{source}: schedulers with explicit trained_betas are not supported")
    schedule = config.get("beta_schedule", "linear")
    prediction = config.get("prediction_type", "epsilon")
    if schedule not in BETA_SCHEDULES:
        raise DiffusersLoadError(f"{source}: beta_schedule={schedule!r} is not one of {sorted(BETA_SCHEDULES)}")
    if prediction not in PREDICTION_TYPES:
        raise DiffusersLoadError(f"{source}: prediction_type={prediction!r} is not one of {sorted(PREDICTION_TYPES)}")
    return GaussianDiffusion(
        schedule=BETA_SCHEDULES[schedule],
        num_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
        prediction_type=PREDICTION_TYPES[prediction],
    )


def _subfolder(root: Path, name: str) -> str | None:
    return name if (root / name).is_dir() else None


def load_diffusers_bundle(
    path: str,
    autoencoder: bool = True,
    latent_scaling_factor: float | None = None,
    torch_dtype: str | None = None,
) -> ModelBundle:
    """The UNet2DModel of a diffusers folder, its scheduler's process and (if present) its autoencoder.

    Args:
        path: local directory or hub id (see the module doc for the layout).
        autoencoder: also load ``vqvae/`` or ``vae/`` as the first stage.
        latent_scaling_factor: the factor the model's pipeline multiplies raw latents by
            (``None``: none, as LDMPipeline).
        torch_dtype: e.g. ``bfloat16`` to halve a large model's memory on GPUs.
    """
    dtype = getattr(torch, torch_dtype) if torch_dtype else None
    try:
        root = local_copy(str(path), ["unet", "scheduler", "vqvae", "vae", None])
    except DiffusersFolderError as err:
        raise DiffusersLoadError(f"{err}\n{LAYOUT_HELP}") from err
    if not root.is_dir():
        raise DiffusersLoadError(f"{path} is a file, not a directory; {LAYOUT_HELP}")
    unet_sub = _subfolder(root, "unet")
    scheduler_sub = _subfolder(root, "scheduler")
    unet_dir = root / (unet_sub or "")
    try:
        class_name, use_safetensors = check_component(unet_dir, UNET_CLASSES)
        network = _load_unet(class_name, unet_dir, dtype, use_safetensors)
        scheduler_config = read_config(root / (scheduler_sub or ""), "scheduler_config.json")
        pipeline_config = read_config(root, "model_index.json") if (root / "model_index.json").is_file() else {}
        run_config = _run_config(root, path)
        record = read_config(root, EXPORT_RECORD) if (root / EXPORT_RECORD).is_file() else {}
    except DiffusersFolderError as err:
        raise DiffusersLoadError(f"{err}\n{LAYOUT_HELP}") from err
    diffusion = diffusion_from_scheduler_config(
        scheduler_config, source=f"{path}/{scheduler_sub + '/' if scheduler_sub else ''}scheduler_config.json"
    )

    first_stage, first_stage_config = None, None
    sub = (_subfolder(root, "vqvae") or _subfolder(root, "vae")) if autoencoder else None
    if sub is not None:
        from spectral_diffusion.autoencoders import DiffusersAutoencoder

        first_stage = DiffusersAutoencoder(str(root), subfolder=sub)  # its class decides: KL or VQ
        kind = first_stage.kind
        first_stage_config = {
            "_target_": "spectral_diffusion.autoencoders.DiffusersAutoencoder",
            "path": str(path),
            "subfolder": sub,
            "kind": kind,
        }
        channels = first_stage.latent_channels
        if pipeline_config.get("latent_scale") is not None:  # an exported model's own statistics
            first_stage.set_latent_stats(pipeline_config.get("latent_shift") or 0.0, pipeline_config["latent_scale"])
        else:
            scale = 1.0 / latent_scaling_factor if latent_scaling_factor else 1.0
            first_stage.set_latent_stats(torch.zeros(channels), torch.full((channels,), scale))

    return ModelBundle(
        network=network,
        diffusion=diffusion,
        first_stage=first_stage,
        shape=(network.in_channels, network.image_size, network.image_size),
        num_classes=network.num_classes,
        source=f"diffusers:{path}",
        weights=str(record.get("weights") or ""),
        global_step=int(record.get("global_step", -1)) if isinstance(record.get("global_step", -1), int) else -1,
        config=run_config,
        first_stage_config=first_stage_config,
    ).freeze()


def _load_unet(class_name: str, unet_dir: Path, dtype: torch.dtype | None, use_safetensors: bool) -> nn.Module:
    """The folder's denoiser as a framework network: diffusers' UNet2DModel wrapped, or our own UNet unwrapped."""
    if class_name == "SpectralUNet2DModel":
        from spectral_diffusion.networks.diffusers_unet import SpectralUNet2DModel as model_class
    else:
        from diffusers import UNet2DModel as model_class
    try:
        unet = model_class.from_pretrained(
            unet_dir, torch_dtype=dtype, use_safetensors=use_safetensors, low_cpu_mem_usage=False
        )
    except Exception as err:  # diffusers' own errors: a config that does not fit the weights, ...
        raise DiffusersLoadError(f"cannot load a {class_name} from {unet_dir}: {err}\n{LAYOUT_HELP}") from err
    return unet.network if class_name == "SpectralUNet2DModel" else DiffusersUNet(unet)


def _run_config(root: Path, path: str) -> dict[str, Any] | None:
    """The training run's config an exported folder carries, checked like a checkpoint's; ``None`` if absent."""
    if not (root / RUN_CONFIG_FILE).is_file():
        return None
    config = read_config(root, RUN_CONFIG_FILE)
    check_stored_config(config, f"{path}/{RUN_CONFIG_FILE}")
    return config
