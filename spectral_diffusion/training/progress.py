"""Training progress in the unit a run is configured in: optimizer steps out of ``trainer.max_steps``.

Lightning's bars count batches per epoch (``Epoch 0/-2``, 937 batches) of runs that are set up by
steps. This one shows ``step / max_steps``, the rate, the elapsed time, the ETA and the loss:

- on a terminal, as a tqdm bar that is redrawn in place;
- elsewhere (a cluster's log file, a pipe), as a plain line every ``log_every_s`` seconds and at
  the end, so that a log shows the progress without carriage returns.

A resumed run starts the bar at its step, and its rate counts only the steps of this process.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StepProgress(ProgressBar):
    """Progress of a run in optimizer steps (module doc).

    Args:
        log_every_s: seconds between plain-text lines when the output is not a terminal.
        metric: the logged value shown beside the progress (the training loss).
        stream: where the bar or the lines go (default: standard error).
        tty: force the terminal bar (True) or the plain lines (False); ``None`` asks ``stream``.
    """

    def __init__(
        self,
        log_every_s: float = 30.0,
        metric: str = "train/loss",
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        super().__init__()
        self.log_every_s = float(log_every_s)
        self.metric = metric
        self.stream = stream
        self.tty = tty
        self._enabled = True
        self._bar: Any = None
        self._start_time = 0.0
        self._start_step = 0
        self._last_line = 0.0
        self._total: int | None = None

    # -- ProgressBar interface --------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    # -- figures ----------------------------------------------------------------------------------
    def total_steps(self, trainer: L.Trainer) -> int | None:
        """``max_steps``, or the steps that ``max_epochs`` amount to; ``None`` if unbounded."""
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        estimated = trainer.estimated_stepping_batches
        return int(estimated) if math.isfinite(estimated) else None

    def status(self, trainer: L.Trainer, now: float | None = None) -> str:
        """``step 400/1200 (33%) | 1.21 steps/s | loss 0.0421 | elapsed 5m30s | ETA 11m02s``."""
        now = time.perf_counter() if now is None else now
        step, total = trainer.global_step, self._total
        done = step - self._start_step
        elapsed = now - self._start_time
        rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}"]
        parts.append(f"{rate:.2f} steps/s" if math.isfinite(rate) else "- steps/s")
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            parts.append(f"{self.metric.rsplit('/', 1)[-1]} {float(value):.4g}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if total and math.isfinite(rate):
            parts.append(f"ETA {format_duration((total - step) / rate)}")
        return " | ".join(parts)

    # -- hooks ------------------------------------------------------------------------------------
    def _is_tty(self) -> bool:
        if self.tty is not None:
            return self.tty
        stream = self.stream or sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._total = self.total_steps(trainer)
        self._start_step = trainer.global_step
        self._start_time = self._last_line = time.perf_counter()
        if not self.is_enabled:
            return
        if self._is_tty():
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self._total,
                initial=self._start_step,
                unit="step",
                dynamic_ncols=True,
                file=self.stream or sys.stderr,
                smoothing=0.1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
            )
        else:
            log.info("training from step %d to %s", self._start_step, self._total or "the end of the data")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.is_enabled:
            return
        if self._bar is not None:
            self._bar.update(trainer.global_step - self._bar.n)
            value = trainer.callback_metrics.get(self.metric)
            if value is not None:
                self._bar.set_postfix_str(f"{self.metric.rsplit('/', 1)[-1]} {float(value):.4g}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.log_every_s:
            self._last_line = now
            log.info("%s", self.status(trainer, now))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_enabled and self._bar is not None and not trainer.sanity_checking:
            self._bar.set_description_str("validating", refresh=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.set_description_str("", refresh=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.update(trainer.global_step - self._bar.n)
            self._bar.close()
            self._bar = None
        if self.is_enabled:
            log.info("%s", self.status(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
