"""Training callbacks: EMA weights, sample grids made with them, and the loggers' run ids in checkpoints."""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_only

from spectral_diffusion.utils.checkpoint import LOGGER_IDS_KEY
from spectral_diffusion.utils.images import make_grid, save_grid

log = logging.getLogger(__name__)


class EMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` with two changes for diffusion training.

    - At the end of training the raw weights stay in the module (Lightning copies the average
      over them), so that ``last.ckpt`` still holds both and a longer run resumes exactly.
      Checkpoints keep the EMA weights in ``state_dict`` and the raw ones in
      ``current_model_state``, as Lightning lays them out.
    - :meth:`averaged_weights` temporarily swaps the EMA weights in, for sampling.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    @contextlib.contextmanager
    def averaged_weights(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Run the body with the EMA weights in ``pl_module`` (no-op before training sets it up)."""
        if self._average_model is None:
            yield
            return
        self._swap_models(pl_module)
        try:
            yield
        finally:
            self._swap_models(pl_module)


def find_ema(trainer: L.Trainer) -> EMA | None:
    """The trainer's EMA callback, if it has one."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)


#: Fewest samples and sampler steps a grid scaled down to a short run keeps.
MIN_GRID_SAMPLES = 4
MIN_GRID_STEPS = 10


def grid_plan(num_samples: int, sampler_steps: int, budget_forwards: float) -> tuple[int, int]:
    """``(samples, sampler steps)`` of a grid that costs at most ``budget_forwards`` single-image forwards.

    Samples go first (down to :data:`MIN_GRID_SAMPLES`), then steps (down to :data:`MIN_GRID_STEPS`):
    a few clean samples say more than many noisy ones.
    """
    if num_samples * sampler_steps <= budget_forwards:
        return num_samples, sampler_steps
    samples = max(min(num_samples, MIN_GRID_SAMPLES), int(budget_forwards // sampler_steps))
    steps = max(min(sampler_steps, MIN_GRID_STEPS), min(sampler_steps, int(budget_forwards // samples)))
    return min(samples, num_samples), steps


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps, and at the end of training, sample a PNG grid.

    Samples use the EMA weights when an :class:`EMA` callback is present, a fixed seed (so grids of
    different steps show the same noise developing) and, for class-conditional models, labels
    ``0, 1, 2, ...`` in turn. Grids go to ``<dirpath>/step_XXXXXXX.png`` and ``final.png``, and to
    loggers that take images (TensorBoard, wandb).

    A short run gets a small grid: all the run's grids together may cost at most
    ``max_cost_fraction`` of its training compute (a training image is three forwards: forward and
    backward). Beyond that the grid has fewer samples, then fewer sampler steps, and says so in the
    log. ``max_cost_fraction=null`` keeps every grid at ``num_samples``; ``callbacks.sample_grid=null``
    turns grids off.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 1000,
        num_samples: int = 64,
        seed: int = 0,
        scale: int = 2,
        max_cost_fraction: float | None = 0.2,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.seed = seed
        self.scale = scale
        self.max_cost_fraction = max_cost_fraction
        self._last_written: tuple[int, Path] | None = None
        self._images_per_step: int | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        if self._images_per_step is None:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._images_per_step = len(images) * trainer.accumulate_grad_batches * trainer.world_size
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.write(trainer, pl_module, f"step_{step:07d}.png")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from spectral_diffusion.training.preemption import was_preempted

        if was_preempted(trainer):
            return  # the job is about to be killed; the resumed run writes the final grid
        if self._last_written and self._last_written[0] == trainer.global_step and trainer.is_global_zero:
            # The periodic grid of this very step is the final one: copy it instead of sampling again.
            shutil.copyfile(self._last_written[1], self.dirpath / "final.png")
        else:
            self.write(trainer, pl_module, "final.png")

    def _grid_budget(self, trainer: L.Trainer) -> float:
        """Single-image forwards one grid may cost (``inf`` without a limit or a known run length)."""
        if (
            self.max_cost_fraction is None
            or not self._images_per_step
            or not trainer.max_steps
            or trainer.max_steps < 0
        ):
            return float("inf")
        grids = 1 + (trainer.max_steps // self.every_n_steps if self.every_n_steps > 0 else 0)
        training_forwards = 3 * trainer.max_steps * self._images_per_step
        return self.max_cost_fraction * training_forwards / grids

    @rank_zero_only
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> Path | None:
        """Sample a grid with the EMA weights and save it as ``name`` (sized as the class doc says)."""
        sampler = getattr(pl_module, "sampler", None)  # None: a module that reconstructs, not samples
        full_steps = sampler.num_inference_steps if sampler is not None else 1
        num_samples, steps = grid_plan(self.num_samples, full_steps, self._grid_budget(trainer))
        kwargs: dict[str, Any] = {}
        if (num_samples, steps) != (self.num_samples, full_steps):
            log.info(
                "sample grid scaled to this %d-step run: %d samples with %d sampler steps instead of %d with %d "
                "(callbacks.sample_grid.max_cost_fraction=null keeps the full grid)",
                trainer.max_steps,
                num_samples,
                steps,
                self.num_samples,
                full_steps,
            )
            if sampler is not None and steps != full_steps:
                kwargs["sampler"] = copy.deepcopy(sampler)
                kwargs["sampler"].set_timesteps(steps)
        labels = None
        if getattr(pl_module, "class_conditional", False):
            labels = torch.arange(num_samples) % pl_module.net.num_classes
        ema = find_ema(trainer)
        context = ema.averaged_weights(pl_module) if ema is not None else contextlib.nullcontext()
        with context:
            images = pl_module.generate(num_samples, torch.Generator().manual_seed(self.seed), labels, **kwargs)
        path = save_grid(images, self.dirpath / name, scale=self.scale)
        self._last_written = (trainer.global_step, path)
        log.info("wrote sample grid %s", path)
        self._log_image(trainer, images, name)
        return path

    @staticmethod
    def _log_image(trainer: L.Trainer, images: torch.Tensor, name: str) -> None:
        grid = make_grid(images)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image("samples", grid, trainer.global_step, dataformats="HWC")
            elif type(logger).__name__ == "WandbLogger":
                logger.log_image("samples", [grid.numpy()], step=trainer.global_step, caption=[name])


def logger_ids(trainer: L.Trainer) -> dict[str, str]:
    """The run id of each logger that has one worth continuing (wandb's run id)."""
    ids = {}
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and logger.version:
            ids[type(logger).__name__] = str(logger.version)
    return ids


class LoggerIds(L.Callback):
    """Store the loggers' run ids in every checkpoint, so a resumed or requeued run logs to the same run.

    ``train.py`` reads them back (``utils/run.py: stored_logger_ids``) before the loggers are built.
    Loggers that keep a file of their own (``training/loggers.py: ContinuingCSVLogger``) are told at
    the start of training where the run continues, so they drop what the resumed steps log again.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if hasattr(logger, "resume_at"):
                logger.resume_at(trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        ids = logger_ids(trainer)
        if ids:
            checkpoint[LOGGER_IDS_KEY] = ids
