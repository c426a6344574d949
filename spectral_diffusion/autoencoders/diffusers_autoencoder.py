"""A pretrained diffusers autoencoder (``AutoencoderKL`` or ``VQModel``) as a frozen first stage.

Loaded with ``from_pretrained(path, subfolder=...)`` from a local directory (offline) or a hub id
(online, or from the local hub cache). The usual layouts:

- a Stable-Diffusion-style pipeline: ``subfolder="vae"`` holding an ``AutoencoderKL``;
- a CompVis LDM pipeline (e.g. ``CompVis/ldm-celebahq-256``): ``subfolder="vqvae"`` holding a
  ``VQModel``.

For a VQ model, :meth:`encode_raw` returns the *pre-quantisation* latents and :meth:`decode_raw`
quantises them before decoding: the diffusion model works in the continuous space in front of the
codebook, as in LDM (diffusers' ``VQModel.decode`` quantises by default).
"""

from __future__ import annotations

from typing import Any

import torch

from spectral_diffusion.autoencoders.base import FirstStage
from spectral_diffusion.utils.diffusers_files import DiffusersFolderError, check_component, local_copy

#: diffusers class name -> our ``kind``. ``SpectralAutoencoderKL`` is this framework's KL autoencoder as
#: ``scripts/export.py`` writes it into an exported latent model's ``vae/`` (``diffusers_kl.py``).
SUPPORTED_CLASSES = {"AutoencoderKL": "kl", "VQModel": "vq", "SpectralAutoencoderKL": "kl"}
KINDS = ("auto", "kl", "vq")
EXPECTED_LAYOUT = (
    "a diffusers model directory with a config.json: vae/ holding an AutoencoderKL (Stable Diffusion layout, "
    "subfolder=vae) or vqvae/ holding a VQModel (CompVis LDM layout, subfolder=vqvae)"
)


def _model_class(class_name: str) -> type:
    """The class that loads a component of ``SUPPORTED_CLASSES``: diffusers', or this framework's own."""
    if class_name == "SpectralAutoencoderKL":
        from spectral_diffusion.autoencoders.diffusers_kl import SpectralAutoencoderKL

        return SpectralAutoencoderKL
    import diffusers

    return getattr(diffusers, class_name)


class AutoencoderLoadError(ValueError):
    """The autoencoder cannot be found or is not of a supported class (the message says what is expected)."""


class DiffusersAutoencoder(FirstStage):
    """A frozen diffusers ``AutoencoderKL`` or ``VQModel``.

    Args:
        path: a local directory or a hub id (``from_pretrained``'s first argument).
        subfolder: the model's folder inside ``path`` (``vae``, ``vqvae``), or ``None``.
        kind: ``auto`` (from ``config.json``'s ``_class_name``), ``kl`` or ``vq``; a given kind must
            match the class found.
        sample_posterior: KL only: draw from the posterior in :meth:`encode` instead of its mode.
        use_config_scaling_factor: set the latent stats from the model's config (``scale =
            1 / scaling_factor``, ``shift = shift_factor`` or 0) instead of leaving them to be
            estimated from data.
    """

    def __init__(
        self,
        path: str,
        subfolder: str | None = None,
        kind: str = "auto",
        sample_posterior: bool = False,
        use_config_scaling_factor: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise AutoencoderLoadError(f"autoencoder.kind={kind!r} is not one of {KINDS}")
        path = str(path)
        where = path + (f" (subfolder={subfolder})" if subfolder else "")
        # A model folder is untrusted input: checked (and a hub id fetched, JSON and weights only)
        # before diffusers reads it (utils/diffusers_files.py).
        try:
            folder = local_copy(path, [subfolder]) / (subfolder or "")
            class_name, use_safetensors = check_component(folder, tuple(SUPPORTED_CLASSES))
        except DiffusersFolderError as err:
            raise AutoencoderLoadError(f"{err}; expected {EXPECTED_LAYOUT}") from err
        found = SUPPORTED_CLASSES[class_name]
        if kind != "auto" and kind != found:
            raise AutoencoderLoadError(
                f"autoencoder.kind={kind} but {where} holds a {class_name} (kind {found}); use kind=auto or kind={found}"
            )
        model_class = _model_class(class_name)
        try:
            vae = model_class.from_pretrained(folder, use_safetensors=use_safetensors, low_cpu_mem_usage=False)
        except Exception as err:
            raise AutoencoderLoadError(f"cannot load the {class_name} in {where}: {type(err).__name__}: {err}") from err

        config = vae.config
        latent_channels = (
            (config.get("vq_embed_dim") or config.latent_channels) if found == "vq" else config.latent_channels
        )
        super().__init__(
            image_channels=config.in_channels,
            latent_channels=latent_channels,
            downsample_factor=2 ** (len(config.get("block_out_channels") or config.get("channel_mult")) - 1),
            sample_posterior=sample_posterior and found == "kl",
        )
        self.vae = vae
        self.kind = found
        self.path, self.subfolder = path, subfolder
        self.class_name = class_name
        if use_config_scaling_factor:
            factor = config.get("scaling_factor")
            if not factor or factor <= 0:
                raise AutoencoderLoadError(
                    f"{where}: use_config_scaling_factor=true but its config has scaling_factor={factor!r}; "
                    "set use_config_scaling_factor=false to estimate the stats from data"
                )
            self.set_latent_stats(config.get("shift_factor") or 0.0, 1.0 / factor)
        self._freeze()

    def encode_raw(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "vq":
            return self.vae.encode(x).latents  # before quantisation, as LDM trains on them
        posterior = self.vae.encode(x).latent_dist
        return posterior.sample(generator=generator) if self.sample_posterior else posterior.mode()

    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        # VQModel.decode quantises first (force_not_quantize=False).
        return self.vae.decode(raw).sample

    def _describe_source(self) -> dict[str, Any]:
        return {
            "kind": f"diffusers_{self.kind}",
            "class_name": self.class_name,
            "source": self.path,
            "subfolder": self.subfolder,
            "config_scaling_factor": self.vae.config.get("scaling_factor"),
        }
