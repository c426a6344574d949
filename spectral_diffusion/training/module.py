"""The LightningModule: wires network, diffusion process, loss and sampler together.

It owns nothing but the wiring. The loss is computed by ``self.loss`` (``losses/``), the
parameterisation lives in ``self.diffusion`` (``diffusion/process.py``), sampling in
``self.sampler`` (``diffusion/samplers.py``) and the architecture in ``self.net`` (``networks/``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.diffusion.samplers import Sampler, sample
from spectral_diffusion.utils.checkpoint import METADATA_KEY


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator seeded from (seed, rank, step).

    Timesteps and noise of a training step depend only on these three numbers, so a resumed run
    draws exactly what an uninterrupted one would have drawn, with no RNG state to restore.
    """
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def warmup_lambda(step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up from ~0 to 1 over ``warmup_steps``, then constant."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


class DiffusionModule(L.LightningModule):
    """Trains ``net`` to denoise under ``diffusion`` with ``loss``; samples with ``sampler``.

    Args:
        net: the denoising network ``(x_t, t, class_labels) -> output``.
        diffusion: the Gaussian diffusion process.
        loss: a callable ``(net, x0, class_labels, generator) -> scalar loss``.
        sampler: the sampler used for sample grids during training.
        optimizer: a partially built optimizer (``_partial_: true``), given the parameters here;
            AdamW with lr 2e-4 if ``None``.
        warmup_steps: linear learning-rate warm-up length in optimizer steps.
        seed: base seed of the per-step randomness (see :func:`step_generator`).
        channels_last: keep the network and its inputs in channels-last memory format (faster
            convolutions on CPUs and tensor-core GPUs; the results are the same).
        run_config: the resolved run config, stored in every checkpoint as a plain dict.
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: GaussianDiffusion,
        loss: Callable[..., torch.Tensor],
        sampler: Sampler,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        warmup_steps: int = 0,
        seed: int = 0,
        channels_last: bool = True,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.diffusion = diffusion
        self.loss = loss
        self.sampler = sampler
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, lr=2e-4)
        self.warmup_steps = warmup_steps
        self.seed = seed
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.run_config = run_config or {}

    # -- shapes -----------------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of what the network denoises."""
        return (self.net.in_channels, self.net.image_size, self.net.image_size)

    @property
    def class_conditional(self) -> bool:
        return getattr(self.net, "num_classes", None) is not None

    def _labels(self, batch: Any) -> torch.Tensor | None:
        return batch[1] if self.class_conditional and isinstance(batch, (tuple, list)) else None

    def _images(self, batch: Any) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        generator = step_generator(self.seed, self.global_rank, self.global_step)
        loss = self.loss(self.net, self._images(batch), self._labels(batch), generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.global_step}; the last checkpoint is untouched. "
                "Lower module.optimizer.lr, raise trainer.gradient_clip_val or check the data."
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # Fixed per-batch randomness: validation losses of different steps are comparable.
        generator = step_generator(self.seed + 1, 0, batch_idx)
        loss = self.loss(self.net, self._images(batch), self._labels(batch), generator)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(warmup_lambda, warmup_steps=self.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        class_labels: torch.Tensor | None = None,
        sampler: Sampler | None = None,
    ) -> torch.Tensor:
        """Samples in data space (``(N, C, H, W)``, nominally in [-1, 1]) with the current weights."""
        was_training = self.net.training
        self.net.eval()
        try:
            if class_labels is not None:
                class_labels = class_labels.to(self.device)
            return sample(
                self.net,
                sampler or self.sampler,
                (num_samples, *self.sample_shape),
                generator=generator,
                device=self.device,
                class_labels=class_labels,
            )
        finally:
            self.net.train(was_training)

    # -- checkpoint metadata ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[METADATA_KEY] = {"config": self.run_config, "diffusion": self.diffusion.describe()}
