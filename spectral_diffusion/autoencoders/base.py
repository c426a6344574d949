"""The first-stage interface: a frozen image <-> latent map with per-channel latent statistics.

A latent diffusion model never sees the autoencoder's raw latents. Their scale depends on the
autoencoder (SD's KL-f8 latents have a std of about 5, a VQ-f4's about 1), and a diffusion schedule
assumes data of unit variance. So every first stage carries a shift and a scale per latent channel,
and :meth:`FirstStage.encode` returns ``z = (raw - shift[c]) / scale[c]``; :meth:`FirstStage.decode`
undoes it. The statistics are estimated from data (:func:`~spectral_diffusion.autoencoders.stats.
estimate_latent_stats`) rather than hard-coded, and live in buffers, so they travel with the
module's ``state_dict``.

A first stage is frozen by construction: no parameter needs a gradient, it is in eval mode, and
``train()`` cannot switch it back (LDM does the same). A ``.train()`` call on a LightningModule that
holds one therefore cannot turn on dropout or batch-norm updates in the autoencoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class FirstStage(nn.Module, ABC):
    """A frozen encoder/decoder between images in [-1, 1] and normalised latents.

    Subclasses build their networks, call ``super().__init__(...)`` first and :meth:`_freeze` last,
    and implement :meth:`encode_raw`, :meth:`decode_raw` and :meth:`_describe_source`.

    Args:
        image_channels: channels of the images it encodes (checked by :meth:`latent_shape`).
        latent_channels: channels of its latents.
        downsample_factor: how many pixels one latent position covers along each side.
        sample_posterior: draw from the posterior in :meth:`encode` instead of taking its mode
            (only meaningful for KL autoencoders; the others ignore the generator).
    """

    def __init__(
        self, image_channels: int, latent_channels: int, downsample_factor: int, sample_posterior: bool = False
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_channels", image_channels),
            ("latent_channels", latent_channels),
            ("downsample_factor", downsample_factor),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        self.image_channels = int(image_channels)
        self.latent_channels = int(latent_channels)
        self.downsample_factor = int(downsample_factor)
        self.sample_posterior = bool(sample_posterior)
        self.register_buffer("latent_shift", torch.zeros(self.latent_channels, dtype=torch.float32))
        self.register_buffer("latent_scale", torch.ones(self.latent_channels, dtype=torch.float32))
        # A buffer rather than a Python flag, so that "stats are set" is saved and restored with them.
        self.register_buffer("latent_stats_set", torch.tensor(False))

    # -- freezing ---------------------------------------------------------------------------------
    def _freeze(self) -> None:
        """No gradients, eval mode. Called by subclasses once their networks exist."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FirstStage:
        """Stay in eval mode whatever ``mode`` says: the first stage is never trained in place."""
        return super().train(False)

    # -- the two directions -----------------------------------------------------------------------
    @abstractmethod
    def encode_raw(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(N, C, H, W)`` in [-1, 1] -> raw (unnormalised) latents."""

    @abstractmethod
    def decode_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images in about [-1, 1]."""

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> normalised latents (float32), ``(raw - shift) / scale`` per channel.

        Deterministic (the posterior's mode) unless the first stage was built with
        ``sample_posterior=True``; then ``generator`` (any device's) drives the draw.
        """
        raw = self.encode_raw(x.to(self._compute_dtype()), generator)
        return (raw.float() - self._per_channel(self.latent_shift)) / self._per_channel(self.latent_scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in about [-1, 1] (float32)."""
        raw = z.float() * self._per_channel(self.latent_scale) + self._per_channel(self.latent_shift)
        return self.decode_raw(raw.to(self._compute_dtype())).float()

    def _per_channel(self, stat: torch.Tensor) -> torch.Tensor:
        return stat.float()[None, :, None, None]

    def _compute_dtype(self) -> torch.dtype:
        """The dtype of the networks' weights (float32 for a first stage without any)."""
        param = next(self.parameters(), None)
        return param.dtype if param is not None else torch.float32

    # -- shapes -----------------------------------------------------------------------------------
    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of an image -> ``(latent_channels, H / f, W / f)``, or a clear error."""
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = (int(s) for s in image_shape)
        if c != self.image_channels:
            raise ValueError(
                f"{type(self).__name__} encodes {self.image_channels}-channel images, but the data has {c} channels"
            )
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the first stage's downsampling factor {f}; "
                f"pad or crop the data to a multiple of {f} (e.g. data.pad_to={-(-max(h, w) // f) * f})"
            )
        return (self.latent_channels, h // f, w // f)

    # -- latent statistics ------------------------------------------------------------------------
    @property
    def has_latent_stats(self) -> bool:
        """Whether the shift and scale were set (estimated, or read from a config or checkpoint)."""
        return bool(self.latent_stats_set)

    def set_latent_stats(self, shift: torch.Tensor | Sequence[float], scale: torch.Tensor | Sequence[float]) -> None:
        """Set the per-channel shift and scale (one value each, or one per latent channel)."""
        shift_t = self._as_channel_vector(shift, "shift")
        scale_t = self._as_channel_vector(scale, "scale")
        if not torch.isfinite(shift_t).all():
            raise ValueError(f"latent shift must be finite, got {shift_t.tolist()}")
        if not (torch.isfinite(scale_t).all() and (scale_t > 0).all()):
            raise ValueError(f"latent scale must be finite and > 0, got {scale_t.tolist()}")
        self.latent_shift.copy_(shift_t)
        self.latent_scale.copy_(scale_t)
        self.latent_stats_set.fill_(True)

    def _as_channel_vector(self, value: torch.Tensor | Sequence[float], name: str) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float32).detach().cpu().flatten()
        if t.numel() == 1:
            t = t.expand(self.latent_channels)
        if t.numel() != self.latent_channels:
            raise ValueError(
                f"latent {name} has {t.numel()} values but the first stage has {self.latent_channels} latent channels"
            )
        return t.to(self.latent_shift.device)

    def latent_stats(self) -> dict[str, list[float]]:
        """``{"shift": [...], "scale": [...]}`` as plain lists (for JSON and checkpoints)."""
        return {"shift": self.latent_shift.float().cpu().tolist(), "scale": self.latent_scale.float().cpu().tolist()}

    # -- description ------------------------------------------------------------------------------
    @abstractmethod
    def _describe_source(self) -> dict[str, Any]:
        """``kind`` and where the weights came from (path, hub id, checkpoint), JSON-able."""

    def describe(self) -> dict[str, Any]:
        """What this first stage is, as a JSON-able dict (stored next to cached latents)."""
        return {
            **self._describe_source(),
            "image_channels": self.image_channels,
            "latent_channels": self.latent_channels,
            "downsample_factor": self.downsample_factor,
            "sample_posterior": self.sample_posterior,
            "has_latent_stats": self.has_latent_stats,
            "latent_stats": self.latent_stats(),
        }

    def extra_repr(self) -> str:
        return (
            f"image_channels={self.image_channels}, latent_channels={self.latent_channels}, "
            f"downsample_factor={self.downsample_factor}, has_latent_stats={self.has_latent_stats}"
        )
