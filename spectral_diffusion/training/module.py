"""The LightningModule: wires network, diffusion process, loss, sampler and first stage together.

It owns nothing but the wiring. The loss is computed by ``self.loss`` (``losses/``: plain
denoising, or spectrum-aware distillation from a frozen teacher), the parameterisation lives in
``self.diffusion`` (``diffusion/process.py``), sampling in ``self.sampler``
(``diffusion/samplers.py``), the architecture in ``self.net`` (``networks/``) and the latent space
in ``self.first_stage`` (``autoencoders/``).

Frozen parts (the first stage, the teacher inside a distillation loss) are held through
:class:`~spectral_diffusion.utils.shared.SharedRef`: they follow the module across devices but are
not in its state_dict, its optimizer or its EMA copy, so checkpoints hold only what was trained.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.diffusion.samplers import Sampler, sample
from spectral_diffusion.networks.compilation import compile_mode, compile_network
from spectral_diffusion.training.conditioning import check_dropout, prepare_condition
from spectral_diffusion.utils.checkpoint import METADATA_KEY
from spectral_diffusion.utils.shared import SharedRef

log = logging.getLogger(__name__)

#: What to do with a non-finite training loss (``module.non_finite_loss``).
NON_FINITE_POLICIES = ("stop", "skip")


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A CPU generator seeded from (seed, rank, step).

    Timesteps and noise of a training step depend only on these three numbers, so a resumed run
    draws exactly what an uninterrupted one would have drawn, with no RNG state to restore.
    """
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_slot(batch_idx: int, accumulate: int, world_size: int, rank: int) -> int:
    """Which micro-batch of its optimizer step a batch is, counted over accumulation and ranks.

    Micro-batch ``a`` of rank ``r`` is slot ``a * world_size + r``: the slice of the step's images
    that ``data/resumable_sampler.py`` hands it. Keying the step's randomness by slot rather
    than by rank alone gives every micro-batch its own noise under gradient accumulation, and makes
    a run on W devices draw what a run on one device accumulating W micro-batches draws. With no
    accumulation the slot is the rank.
    """
    return (batch_idx % max(1, accumulate)) * world_size + rank


def seed_global_rngs(seed: int, slot: int, step: int) -> None:
    """Reseed torch's global generators (CPU and accelerators) from (seed, slot, step).

    What draws from them during a step (dropout) then depends on these numbers only, like the
    step's noise, and a resumed run continues the same stream without stored RNG state.
    """
    state = np.random.SeedSequence([seed, slot, step, 1]).generate_state(2, dtype=np.uint32)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def warmup_lambda(step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up from ~0 to 1 over ``warmup_steps``, then constant."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def log_training_loss(module: L.LightningModule, loss: torch.Tensor, parts: dict[str, torch.Tensor], what: str) -> None:
    """Stop on a non-finite loss (before the optimizer step spoils the weights), else log it and its parts."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"{what} is {loss.item()} at step {module.global_step}; the last checkpoint is untouched. "
            "Lower module.optimizer.lr, raise trainer.gradient_clip_val or check the data."
        )
    module.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
    for name, value in parts.items():
        module.log(f"train/{name}", value, on_step=True, on_epoch=False)


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
        first_stage: the frozen autoencoder whose latents the network denoises
            (``autoencoders/``); ``None`` is pixel space. Batches of images are encoded on the fly
            unless the DataModule already provides latents (``provides_latents``).
        label_dropout: probability that a training sample's class label is replaced by the null
            label (classifier-free guidance; ``training/conditioning.py``). Ignored without
            ``num_classes``.
        context_dropout: the same for a context sequence (batches ``(images, labels, context[,
            context_mask])`` of a network with ``context_dim``).
        non_finite_loss: ``stop`` raises on a NaN/inf training loss (the last checkpoint stays the
            last good state); ``skip`` drops that optimizer step (all ranks agree) and goes on.
        compile_network: ``torch.compile`` the network at the start of fitting: ``false``, ``true``
            (the whole forward) or ``regional`` (each repeated block on its own, a far shorter
            warm-up; ``networks/compilation.py``). The state_dict keys do not change, so
            checkpoints are the same either way.
        compile_teacher: the same for the frozen teacher of a distillation loss (its forward under
            ``no_grad`` is a third of a distillation step).
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
        first_stage: nn.Module | None = None,
        label_dropout: float = 0.0,
        context_dropout: float = 0.0,
        non_finite_loss: str = "stop",
        compile_network: bool | str = False,
        compile_teacher: bool | str = False,
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
        self._first_stage = SharedRef(first_stage) if first_stage is not None else None
        self._encode_batches = True
        self.label_dropout = check_dropout(label_dropout, "module.label_dropout")
        self.context_dropout = check_dropout(context_dropout, "module.context_dropout")
        if non_finite_loss not in NON_FINITE_POLICIES:
            raise ValueError(
                f"module.non_finite_loss={non_finite_loss!r} must be one of {', '.join(NON_FINITE_POLICIES)}"
            )
        self.non_finite_loss = non_finite_loss
        self.compile_network = compile_mode(compile_network)
        self.compile_teacher = compile_mode(compile_teacher)
        if channels_last and self.teacher is not None:
            # The frozen teacher runs in the student's layout: no layout copies at its input.
            self.teacher.net.to(memory_format=torch.channels_last)
        self._non_finite_in_step = False  # a micro-batch of the current optimizer step had a NaN/inf loss
        self.skipped_steps = 0

    # -- frozen parts -----------------------------------------------------------------------------
    @property
    def first_stage(self) -> nn.Module | None:
        return self._first_stage.obj if self._first_stage is not None else None

    @property
    def teacher(self) -> nn.Module | None:
        return getattr(self.loss, "teacher", None)

    def frozen_modules(self) -> list[nn.Module]:
        """Modules used but never trained or saved: the first stage and the teacher."""
        return [m for m in (self.first_stage, self.teacher) if m is not None]

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> DiffusionModule:
        # .to(device) / .half() reach the frozen parts too, although they are not submodules.
        super()._apply(fn, *args, **kwargs)
        for module in self.frozen_modules():
            module._apply(fn, *args, **kwargs)
        return self

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

    def _context(self, batch: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(context, context_mask)`` of a batch ``(images, labels, context[, mask])`` for a context network."""
        if getattr(self.net, "context_dim", None) is None or not isinstance(batch, (tuple, list)) or len(batch) < 3:
            return None, None
        return batch[2], (batch[3] if len(batch) > 3 else None)

    def _images(self, batch: Any) -> torch.Tensor:
        """What the network denoises: the batch's latents, or its images encoded by the first stage."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.first_stage is not None and self._encode_batches:
            with torch.no_grad():
                images = self.first_stage.encode(images)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def setup(self, stage: str) -> None:
        # A DataModule of cached latents (data/latents.py) says so; everything else yields images.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self._encode_batches = not getattr(datamodule, "provides_latents", False)

    def _compute_loss(self, batch: Any, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The loss and, for losses that have several terms (distillation), each term."""
        images = self._images(batch)
        # Condition dropout (for classifier-free guidance) in training only; validation stays conditional.
        condition = prepare_condition(
            self._labels(batch),
            *self._context(batch),
            num_classes=getattr(self.net, "num_classes", None),
            label_dropout=self.label_dropout if self.training else 0.0,
            context_dropout=self.context_dropout if self.training else 0.0,
            generator=generator,
        )
        labels, extra = condition.class_labels, condition.network_kwargs()
        if hasattr(self.loss, "terms"):
            return self.loss.terms(self.net, images, labels, generator, **extra)
        return {"loss": self.loss(self.net, images, labels, generator, **extra)}

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        trainer = self._trainer
        accumulate, world_size = (trainer.accumulate_grad_batches, trainer.world_size) if trainer else (1, 1)
        slot = sample_slot(batch_idx, accumulate, world_size, self.global_rank)
        seed_global_rngs(self.seed, slot, self.global_step)
        terms = self._compute_loss(batch, step_generator(self.seed, slot, self.global_step))
        loss = terms.pop("loss")
        if self.non_finite_loss == "skip" and not torch.isfinite(loss):
            # Backward still runs (under DDP every rank must reduce gradients); optimizer_step drops them.
            self._non_finite_in_step = True
            log.warning("training loss is %s at step %d: skipping this step", loss.item(), self.global_step)
            return loss
        log_training_loss(self, loss, terms, "training loss")
        return loss

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """With ``non_finite_loss=skip``: no update for a step whose loss was not finite on any rank."""
        if self.non_finite_loss != "skip":
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        result = optimizer_closure() if optimizer_closure is not None else None  # forward + backward
        skip = self._non_finite_in_step
        if self.trainer.world_size > 1:
            skip = self.trainer.strategy.reduce_boolean_decision(skip, all=False)
        self._non_finite_in_step = False
        if skip:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
            return None
        # The precision plugin calls the closure (cached result), clips, and steps as usual.
        return optimizer.step(closure=lambda: result)

    def on_fit_start(self) -> None:
        compile_network(self.net, self.compile_network)  # in place: state_dict keys stay as they are
        if self.teacher is not None:
            compile_network(self.teacher.net, self.compile_teacher)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # Fixed per-batch randomness: validation losses of different steps are comparable.
        generator = step_generator(self.seed + 1, 0, batch_idx)
        terms = self._compute_loss(batch, generator)
        loss = terms.pop("loss")
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True)
        for name, value in terms.items():
            self.log(f"val/{name}", value, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        # The network and, for distillation, the loss's 1x1 feature adapters. Frozen parts have none.
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
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
        """Samples in data space (``(N, C, H, W)``, nominally in [-1, 1]) with the current weights.

        In latent space the network's samples are decoded by the first stage.
        """
        was_training = self.net.training
        self.net.eval()
        try:
            if class_labels is not None:
                class_labels = class_labels.to(self.device)
            latents = sample(
                self.net,
                sampler or self.sampler,
                (num_samples, *self.sample_shape),
                generator=generator,
                device=self.device,
                class_labels=class_labels,
            )
            return self.first_stage.decode(latents) if self.first_stage is not None else latents
        finally:
            self.net.train(was_training)

    # -- checkpoint metadata ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        metadata = {"config": self.run_config, "diffusion": self.diffusion.describe()}
        if self.first_stage is not None:
            # The latent normalisation the network was trained under: sampling must decode with it.
            metadata["first_stage"] = self.first_stage.describe()
            metadata["latent_stats"] = self.first_stage.latent_stats()
        if self.teacher is not None:
            metadata["teacher"] = self.teacher.describe()  # a record only: no teacher weights
        checkpoint[METADATA_KEY] = metadata

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stats = checkpoint.get(METADATA_KEY, {}).get("latent_stats")
        if stats and self.first_stage is not None:
            self.first_stage.set_latent_stats(torch.tensor(stats["shift"]), torch.tensor(stats["scale"]))
