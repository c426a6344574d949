"""The framework's own KL autoencoder as a frozen first stage.

``python train.py experiment=fmnist_autoencoder`` writes Lightning checkpoints whose metadata holds
the run config (the network is rebuilt from its ``model`` entry) and the latent statistics that
:class:`~spectral_diffusion.training.autoencoder_module.AutoencoderModule` estimated on training
data for the weights stored beside them.
"""

from __future__ import annotations

from typing import Any

import torch

from spectral_diffusion.autoencoders.base import FirstStage
from spectral_diffusion.autoencoders.kl_autoencoder import KLAutoencoder

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


class FrameworkAutoencoder(KLFirstStage):
    """A :class:`KLAutoencoder` trained by ``python train.py experiment=fmnist_autoencoder``, with its latent stats.

    Loaded from a checkpoint by ``spectral_diffusion/assembly/first_stages.py: framework_autoencoder``
    (the ``autoencoder=framework`` config's target), which reads the file.

    Args:
        net: the trained autoencoder network.
        stats: ``{"shift": ..., "scale": ...}`` estimated for these weights, or ``None`` (unset).
        source: the checkpoint it came from.
        use_ema: whether ``net`` holds the EMA weights (recorded in :meth:`describe`).
        global_step: the checkpoint's training step.
        sample_posterior: :meth:`encode` draws from the posterior instead of taking its mean.
    """

    def __init__(
        self,
        net: KLAutoencoder,
        stats: dict[str, Any] | None = None,
        source: str | None = None,
        use_ema: bool = True,
        global_step: int = -1,
        sample_posterior: bool = False,
    ) -> None:
        super().__init__(net, sample_posterior=sample_posterior, source=source)
        self.use_ema = use_ema
        self.global_step = global_step
        if stats is not None:
            self.set_latent_stats(stats["shift"], stats["scale"])

    def _describe_source(self) -> dict[str, Any]:
        return {
            "kind": "framework_kl",
            "source": self.source,
            "weights": "ema" if self.use_ema else "raw",
            "global_step": self.global_step,
        }
