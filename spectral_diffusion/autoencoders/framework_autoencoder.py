"""The framework's own KL autoencoder as a frozen first stage, from a network or a training checkpoint.

``python train.py experiment=fmnist_autoencoder`` writes Lightning checkpoints whose metadata holds
the run config (the network is rebuilt from its ``model`` entry) and the latent statistics that
:class:`~spectral_diffusion.training.autoencoder_module.AutoencoderModule` estimated on training
data for the weights stored beside them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from spectral_diffusion.autoencoders.base import FirstStage
from spectral_diffusion.autoencoders.kl_autoencoder import KLAutoencoder
from spectral_diffusion.utils.checkpoint import (
    METADATA_KEY,
    checkpoint_config,
    load_checkpoint,
    load_network_weights,
    network_state_dict,
)

log = logging.getLogger(__name__)

#: ``_target_`` values of the model config that name the framework's KL autoencoder.
KL_TARGETS = (
    "spectral_diffusion.autoencoders.KLAutoencoder",
    "spectral_diffusion.autoencoders.kl_autoencoder.KLAutoencoder",
)
#: Metadata keys of the latent stats: for the weights in ``state_dict`` (EMA ones when EMA was on),
#: and for the raw weights in ``current_model_state``.
STATS_KEY = "latent_stats"
RAW_STATS_KEY = "latent_stats_raw"


class KLFirstStage(FirstStage):
    """Wraps a :class:`KLAutoencoder` (trained or not) as a frozen first stage.

    Args:
        net: the autoencoder network; it is frozen in place.
        sample_posterior: :meth:`encode` draws from the posterior instead of taking its mean.
        source: where the weights came from, for :meth:`describe`.
    """

    def __init__(self, net: KLAutoencoder, sample_posterior: bool = False, source: str | None = None) -> None:
        super().__init__(
            image_channels=net.in_channels,
            latent_channels=net.latent_channels,
            downsample_factor=net.downsample_factor,
            sample_posterior=sample_posterior,
        )
        self.net = net
        self.source = source
        self._freeze()

    def encode_raw(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, logvar = self.net.encode(x)
        return self.net.sample(mean, logvar, generator) if self.sample_posterior else mean

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        return self.net.decode(raw)

    def _describe_source(self) -> dict[str, Any]:
        return {"kind": "framework_kl", "source": self.source}


def build_kl_autoencoder(model_cfg: dict[str, Any], source: str) -> KLAutoencoder:
    """The :class:`KLAutoencoder` of a stored ``model`` config.

    Built directly rather than through ``hydra.utils.instantiate``: a checkpoint is user input, and
    instantiating an arbitrary ``_target_`` from it would run whatever it names.
    """
    target = (model_cfg or {}).get("_target_")
    if target not in KL_TARGETS:
        raise ValueError(
            f"{source} is not a KL autoencoder checkpoint: its model is {target!r}, expected {KL_TARGETS[0]} "
            "(a checkpoint of `python train.py experiment=fmnist_autoencoder`)"
        )
    kwargs = {k: v for k, v in model_cfg.items() if not k.startswith("_")}
    try:
        return KLAutoencoder(**kwargs)
    except TypeError as err:
        raise ValueError(f"the model config stored in {source} does not fit KLAutoencoder: {err}") from err


class FrameworkAutoencoder(KLFirstStage):
    """A :class:`KLAutoencoder` trained by ``python train.py experiment=fmnist_autoencoder``.

    Args:
        ckpt_path: the Lightning checkpoint (read with ``weights_only=True``).
        use_ema: the EMA weights (the checkpoint's ``state_dict`` when the EMA callback ran), else
            the raw training weights; the matching latent stats are restored either way.
        sample_posterior: :meth:`encode` draws from the posterior instead of taking its mean.
    """

    def __init__(self, ckpt_path: str, use_ema: bool = True, sample_posterior: bool = False) -> None:
        path = Path(ckpt_path).expanduser()
        checkpoint = load_checkpoint(path)
        config = checkpoint_config(checkpoint)
        if config is None or "model" not in config:
            raise ValueError(
                f"{path} holds no spectral_diffusion run config with a 'model' entry; expected a checkpoint of "
                "`python train.py experiment=fmnist_autoencoder`"
            )
        net = build_kl_autoencoder(config["model"], str(path))
        load_network_weights(net, network_state_dict(checkpoint, use_ema=use_ema), source=str(path))
        super().__init__(net, sample_posterior=sample_posterior, source=str(path.resolve()))
        self.use_ema = use_ema
        self.global_step = int(checkpoint.get("global_step", -1))
        raw_weights = not use_ema and "current_model_state" in checkpoint
        metadata = checkpoint.get(METADATA_KEY, {})
        stats = metadata.get(RAW_STATS_KEY if raw_weights else STATS_KEY)
        if stats is not None:
            self.set_latent_stats(stats["shift"], stats["scale"])
        else:
            log.warning(
                "%s holds no latent stats for its %s weights; they stay unset (shift 0, scale 1) until estimated, "
                "e.g. by scripts/encode_latents.py",
                path,
                "raw" if raw_weights else "stored",
            )

    def _describe_source(self) -> dict[str, Any]:
        return {
            "kind": "framework_kl",
            "source": self.source,
            "weights": "ema" if self.use_ema else "raw",
            "global_step": self.global_step,
        }
