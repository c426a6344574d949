"""L_DDPM: the denoising loss of a diffusion model."""

from __future__ import annotations

import torch
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion


def context_kwargs(context: torch.Tensor | None, context_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Keyword arguments for a network call: the context parts that are set, nothing otherwise.

    Networks (and teachers) that know nothing of context keep being called ``net(x_t, t, labels)``.
    """
    kwargs = {}
    if context is not None:
        kwargs["context"] = context
    if context_mask is not None:
        kwargs["context_mask"] = context_mask
    return kwargs


class DenoisingLoss:
    """Mean squared error between the network's output and the process's training target.

    Timesteps are uniform over ``[0, T)``. ``snr_gamma`` turns on Min-SNR-gamma weighting (Hang et
    al., 2023), expressed for whichever target the process uses; ``None`` is the plain DDPM loss.

    Randomness (timesteps and noise) comes from ``generator`` on the CPU, so that a training step
    is reproducible from (seed, rank, step) whatever the device.
    """

    def __init__(self, diffusion: GaussianDiffusion, snr_gamma: float | None = None) -> None:
        self.diffusion = diffusion
        self.snr_gamma = snr_gamma

    def noised_batch(
        self, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``(x_t, t, noise)`` for a batch of clean samples; ``t`` is on ``x0``'s device."""
        t = self.diffusion.sample_timesteps(x0.shape[0], generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        t = t.to(x0.device)
        return self.diffusion.add_noise(x0, noise, t), t, noise

    def weights(self, t: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weights for Min-SNR-gamma, or ``None`` for uniform weighting."""
        if self.snr_gamma is None:
            return None
        snr = self.diffusion.snr(t)
        clipped = snr.clamp(max=self.snr_gamma)
        kind = self.diffusion.prediction_type
        w = clipped / snr if kind == "eps" else clipped / (snr + 1) if kind == "v" else clipped
        return w.float().to(t.device)

    def per_sample(
        self, prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """Weighted squared error of each sample, averaged over its elements (float32)."""
        target = self.diffusion.training_target(x0, noise, t)
        err = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        w = self.weights(t)
        return err if w is None else err * w

    def __call__(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean loss of a batch; ``context`` and ``context_mask`` go to the network as they are."""
        x_t, t, noise = self.noised_batch(x0, generator)
        prediction = net(x_t, t, class_labels, **context_kwargs(context, context_mask))
        return self.per_sample(prediction, x0, noise, t).mean()
