"""First stages that are themselves trained runs of this framework (``autoencoder=framework``)."""

from __future__ import annotations

import logging
from pathlib import Path

from spectral_diffusion.assembly.load import stored_network
from spectral_diffusion.autoencoders.framework_autoencoder import (
    KL_TARGETS,
    RAW_STATS_KEY,
    STATS_KEY,
    FrameworkAutoencoder,
)
from spectral_diffusion.utils.checkpoint import METADATA_KEY, read_checkpoint
from spectral_diffusion.utils.errors import ConfigError

log = logging.getLogger(__name__)


def framework_autoencoder(ckpt_path: str, use_ema: bool = True, sample_posterior: bool = False) -> FrameworkAutoencoder:
    """The KL autoencoder of a ``python train.py experiment=fmnist_autoencoder`` checkpoint, frozen.

    The EMA weights are used when the checkpoint has them (``use_ema``), with the latent statistics
    the run estimated for exactly those weights.
    """
    path = Path(ckpt_path).expanduser()
    checkpoint, config = read_checkpoint(path)
    source = str(path.resolve())
    if config is None or "model" not in config:
        raise ConfigError(
            f"{path} holds no spectral_diffusion run config with a 'model' entry; expected a checkpoint of "
            "`python train.py experiment=fmnist_autoencoder`"
        )
    target = config["model"].get("_target_") if isinstance(config["model"], dict) else None
    if target not in KL_TARGETS:
        raise ConfigError(
            f"{path} is not a KL autoencoder checkpoint: its model is {target!r}, expected {KL_TARGETS[0]} "
            "(a checkpoint of `python train.py experiment=fmnist_autoencoder`)"
        )
    net = stored_network(checkpoint, config, use_ema, source)
    raw_weights = not use_ema and "current_model_state" in checkpoint
    stats = checkpoint.get(METADATA_KEY, {}).get(RAW_STATS_KEY if raw_weights else STATS_KEY)
    if stats is None:
        log.warning(
            "%s holds no latent stats for its %s weights; they stay unset (shift 0, scale 1) until estimated, "
            "e.g. by scripts/encode_latents.py",
            path,
            "raw" if raw_weights else "stored",
        )
    return FrameworkAutoencoder(
        net,
        stats=stats,
        source=source,
        use_ema=use_ema,
        global_step=int(checkpoint.get("global_step", -1)),
        sample_posterior=sample_posterior,
    )
