"""Training callbacks: EMA weights, sample grids made with them, and the loggers' run ids in checkpoints."""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_only

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


class SampleGrid(L.Callback):
    """Every ``every_n_steps`` optimizer steps, and at the end of training, sample a PNG grid.

    Samples use the EMA weights when an :class:`EMA` callback is present, a fixed seed (so grids of
    different steps show the same noise developing) and, for class-conditional models, labels
    ``0, 1, 2, ...`` in turn. Grids go to ``<dirpath>/step_XXXXXXX.png`` and ``final.png``, and to
    loggers that take images (TensorBoard, wandb).
    """

    def __init__(
        self,
        dirpath: str,
        every_n_steps: int = 1000,
        num_samples: int = 64,
        seed: int = 0,
        scale: int = 2,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.seed = seed
        self.scale = scale
        self._last_written: tuple[int, Path] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
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

    @rank_zero_only
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> Path | None:
        """Sample ``num_samples`` images with the EMA weights and save them as ``name``."""
        labels = None
        if getattr(pl_module, "class_conditional", False):
            labels = torch.arange(self.num_samples) % pl_module.net.num_classes
        ema = find_ema(trainer)
        context = ema.averaged_weights(pl_module) if ema is not None else contextlib.nullcontext()
        with context:
            images = pl_module.generate(self.num_samples, torch.Generator().manual_seed(self.seed), labels)
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


#: Top-level checkpoint key of the loggers' run ids (``{"WandbLogger": "<run id>", ...}``).
LOGGER_IDS_KEY = "logger_ids"


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
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        ids = logger_ids(trainer)
        if ids:
            checkpoint[LOGGER_IDS_KEY] = ids
