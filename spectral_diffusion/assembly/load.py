"""The one loader of trained models: a ``train.py`` checkpoint or a diffusers folder as a :class:`ModelBundle`.

``evaluate.py``, ``scripts/inpaint.py``, ``teacher=checkpoint``/``teacher=diffusers``,
``autoencoder=framework`` and the reproduction all load through :func:`load_run`, so a checkpoint
is checked the same way wherever it is used:

1. the file is read with ``torch.load(weights_only=True)`` and its stored config walked by
   ``utils/stored_config.py``, which refuses anything a checkpoint may not ask for, before
   anything is built (``utils/checkpoint.py: read_checkpoint``);
2. the network, the first stage and (for evaluation) the data module are rebuilt from registered
   names with plain keyword arguments (``registry.py``), never by importing what the file names;
3. the weights are loaded strictly, EMA by default.

A directory (or a hub id) is a diffusers model folder instead (``bundles/diffusers_folder.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from spectral_diffusion.assembly.parts import build_network, is_identity
from spectral_diffusion.assembly.registry import build_stored
from spectral_diffusion.bundles import ModelBundle, load_diffusers_bundle
from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.utils.checkpoint import (
    METADATA_KEY,
    load_network_weights,
    network_state_dict,
    read_checkpoint,
)
from spectral_diffusion.utils.diffusers_files import is_local
from spectral_diffusion.utils.errors import ConfigError
from spectral_diffusion.utils.stored_config import StoredConfigError


class MissingStoredConfigError(ConfigError):
    """A checkpoint without the run config ``train.py`` stores (the message says what to pass instead)."""


def stored_network(checkpoint: dict[str, Any], config: dict[str, Any], use_ema: bool, source: str) -> nn.Module:
    """The network of a checkpoint's stored ``model`` config, with its (EMA) weights, in eval mode."""
    if "model" not in config:
        raise StoredConfigError(f"{source}: the stored config has no 'model' entry")
    net = build_stored(config["model"], "model", source)
    load_network_weights(net, network_state_dict(checkpoint, use_ema=use_ema), source=source)
    return net.eval()


def stored_diffusion(
    checkpoint: dict[str, Any], config: dict[str, Any] | None, source: str
) -> GaussianDiffusion | None:
    """The diffusion process of a checkpoint: its stored ``diffusion`` config, else the settings its
    metadata records; ``None`` for an autoencoder run."""
    if config and config.get("diffusion"):
        return build_stored(config["diffusion"], "diffusion", source)
    settings = checkpoint.get(METADATA_KEY, {}).get("diffusion")
    if settings is None:
        return None
    if not isinstance(settings, dict):
        raise StoredConfigError(f"{source}: the stored diffusion settings are not a mapping")
    try:
        return GaussianDiffusion(**settings)
    except TypeError as err:
        raise StoredConfigError(f"{source}: the stored diffusion settings do not fit GaussianDiffusion: {err}") from err


def stored_first_stage(checkpoint: dict[str, Any], config: dict[str, Any], source: str) -> nn.Module | None:
    """The first stage a checkpoint was trained in (``None``: pixel space), with its latent statistics."""
    node = config.get("autoencoder")
    if not node:
        return None
    first_stage = build_stored(node, "autoencoder", source)
    if is_identity(first_stage):
        return None
    stats = checkpoint.get(METADATA_KEY, {}).get("latent_stats")
    if stats:
        first_stage.set_latent_stats(torch.tensor(stats["shift"]), torch.tensor(stats["scale"]))
    return first_stage


def load_run(path: str | Path, use_ema: bool = True, model_cfg: DictConfig | None = None) -> ModelBundle:
    """The trained model at ``path``, frozen: a ``train.py`` checkpoint (EMA weights unless ``use_ema=False``),
    or a diffusers model folder / hub id.

    ``model_cfg`` (from the command line, trusted) overrides the stored model config; it must fit the
    weights. The returned bundle holds the checked stored config in ``config``.
    """
    text = str(path)
    local = Path(text).expanduser()
    if local.is_dir() or (not local.exists() and not is_local(text)):
        return load_diffusers_bundle(text)
    if not local.is_file():
        raise FileNotFoundError(f"checkpoint {local} does not exist")
    source = f"checkpoint:{local.resolve()}"
    checkpoint, config = read_checkpoint(local)
    if config is None and model_cfg is None:
        raise MissingStoredConfigError(
            f"{source} holds no spectral_diffusion config; pass the model it was trained with, model=PRESET"
        )
    diffusion = stored_diffusion(checkpoint, config, source)
    if diffusion is None:
        raise ConfigError(
            f"{source} holds no diffusion process: it is not a diffusion model's checkpoint (an autoencoder run is "
            "used as autoencoder=framework autoencoder.ckpt_path=PATH)"
        )
    if model_cfg is not None:
        net = build_network(model_cfg)
        load_network_weights(net, network_state_dict(checkpoint, use_ema=use_ema), source=source)
        net.eval()
    else:
        net = stored_network(checkpoint, config, use_ema, source)
    first_stage = stored_first_stage(checkpoint, config, source) if config else None
    return ModelBundle(
        network=net,
        diffusion=diffusion,
        first_stage=first_stage,
        shape=(net.in_channels, net.image_size, net.image_size),
        num_classes=getattr(net, "num_classes", None),
        source=source,
        weights="ema" if use_ema and "current_model_state" in checkpoint else "raw",
        global_step=int(checkpoint.get("global_step", -1)),
        config=config,
        first_stage_config=dict(config["autoencoder"]) if first_stage is not None else None,
    ).freeze()


def stored_data(bundle: ModelBundle) -> Any:
    """The DataModule of a checkpoint's stored ``data`` config (``None`` if it has none), from the registry."""
    node = (bundle.config or {}).get("data")
    return build_stored(node, "data", bundle.source) if node else None
