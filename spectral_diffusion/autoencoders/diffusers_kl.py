"""The framework's KL autoencoder as a diffusers model, for exported latent-space students (``vae/``).

A latent student trained on ``autoencoder=framework`` decodes through this framework's own
:class:`KLAutoencoder`, which is not one of diffusers' classes. ``SpectralAutoencoderKL`` gives it
diffusers' model interface (``ModelMixin`` + ``ConfigMixin``; config.json + safetensors) with the
calls diffusers' pipelines make on a VAE: ``vae.encode(x).latent_dist`` and ``vae.decode(z).sample``.
The latents are the raw ones; the per-channel normalisation the diffusion model was trained on is
the pipeline's (``latent_shift`` / ``latent_scale`` in model_index.json).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from spectral_diffusion.autoencoders.kl_autoencoder import KLAutoencoder


class SpectralAutoencoderKL(ModelMixin, ConfigMixin):
    """A :class:`KLAutoencoder` with diffusers' autoencoder interface. Args: those of :class:`KLAutoencoder`."""

    config_name = "config.json"

    # The arguments are spelled out rather than taken as **kwargs: register_to_config writes the named
    # parameters of __init__ into config.json, and from_pretrained passes exactly those back.
    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        latent_channels: int = 4,
        attention_resolutions: Sequence[int] = (),
        mid_attention: bool = True,
        head_channels: int = 32,
        dropout: float = 0.0,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        self.net = KLAutoencoder(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            latent_channels=latent_channels,
            attention_resolutions=tuple(attention_resolutions),
            mid_attention=mid_attention,
            head_channels=head_channels,
            dropout=dropout,
            image_size=image_size,
        )

    @classmethod
    def from_network(cls, net: KLAutoencoder) -> SpectralAutoencoderKL:
        """The diffusers model holding a copy of ``net``'s weights (its architecture read off the network)."""
        model = cls(**net.architecture())
        model.net.load_state_dict(net.state_dict())
        return model

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        mean, logvar = self.net.encode(x)
        posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        images = self.net.decode(z)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Reconstruct ``sample`` through the posterior's mean."""
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict=return_dict)
