"""Checkpoint on a preemption signal, requeue on SLURM, and stop; re-running the command resumes.

SLURM warns a job before its time limit or preemption with a signal (``#SBATCH --signal=USR1@120``;
``scancel --signal``; a plain ``kill``). Lightning's own SLURM handler saves ``hpc_ckpt_N.ckpt``
*inside* the signal handler, i.e. at whatever instruction the signal interrupts, possibly halfway
through an optimizer step, so its checkpoint is not an exact resume point. This callback instead:

1. only records the signal in the handler;
2. at the next optimizer-step boundary (where ``ModelCheckpoint`` saves too), all ranks agree
   that a signal arrived on any of them, and the run's ``last.ckpt`` is written (atomically);
3. on SLURM, rank 0 requeues the job (``scontrol requeue``); the requeued job runs the same
   command, which resumes from ``last.ckpt`` (``utils/run.py: find_resume_checkpoint``);
4. training stops; ``train.py`` skips the end-of-run outputs of a preempted run.

The handlers are installed when training starts, after Lightning has registered its own, and
replace them for the signals listed here: Lightning's in-handler save does not run, and a SIGTERM
ends the fit through this callback (on every rank, by the agreement above) instead of through
Lightning's ``SIGTERMException``. Lightning's teardown puts the original handlers back.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

REQUEUE_CHOICES = ("auto", "always", "never")


def parse_signal(name: str | int) -> signal.Signals:
    """``"SIGUSR1"``, ``"USR1"`` or ``10`` as a ``signal.Signals``; an unknown name is an error naming it."""
    if isinstance(name, int):
        return signal.Signals(name)
    text = str(name).upper()
    text = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return signal.Signals[text]
    except KeyError:
        raise ValueError(
            f"callbacks.preemption.signals: {name!r} is not a signal name (e.g. SIGUSR1, SIGUSR2, SIGTERM)"
        ) from None


def slurm_job_id() -> str | None:
    """The SLURM job to requeue (``<array job>_<task>`` for array jobs), or ``None`` outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job(job_id: str) -> bool:
    """``scontrol requeue JOB``; False (and a warning) if it fails."""
    if not re.fullmatch(r"[0-9_]+", job_id):
        log.warning("not requeueing: SLURM job id %r is not numeric", job_id)
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("could not requeue SLURM job %s: %s", job_id, err)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job_id, result.returncode, result.stderr.strip())
        return False
    log.info("requeued SLURM job %s", job_id)
    return True


class Preemption(L.Callback):
    """Save ``last.ckpt`` at the next step after one of ``signals`` and stop (see module doc).

    Args:
        signals: signal names to treat as "you are about to be stopped" (e.g. SIGUSR1, SIGTERM).
        requeue: ``auto`` requeues when running under SLURM, ``always`` insists (a warning outside
            SLURM), ``never`` leaves it to the launcher.
        dirpath: where ``last.ckpt`` goes; default the ``ModelCheckpoint``'s folder, else
            ``<default_root_dir>/checkpoints``.
    """

    def __init__(
        self,
        signals: list[str] | tuple[str, ...] = ("SIGUSR1", "SIGTERM"),
        requeue: str = "auto",
        dirpath: str | None = None,
    ) -> None:
        if requeue not in REQUEUE_CHOICES:
            raise ValueError(f"callbacks.preemption.requeue={requeue!r} must be one of {', '.join(REQUEUE_CHOICES)}")
        self.signals = [parse_signal(s) for s in signals]
        self.requeue = requeue
        self.dirpath = dirpath
        self.received: signal.Signals | None = None
        self.preempted = False
        self.checkpoint_path: Path | None = None
        self._previous: dict[signal.Signals, Any] = {}

    # -- signal handling ------------------------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only note it: the checkpoint is written where the training state is consistent.
        if self.received is None:
            self.received = signal.Signals(signum)
            log.warning("received %s: saving a checkpoint after the current step", self.received.name)

    def install(self) -> None:
        """Install the handlers (main thread only; Python allows signal handlers nowhere else)."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Give the signals back to their previous handlers, where ours is still the one installed.

        After a normal fit Lightning's teardown has already restored the handlers it found, which
        predate ours; re-installing what we replaced (Lightning's) would leak it.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self.preempted = None, False
        self.install()  # after Lightning's register_signal_handlers (see module doc)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.uninstall()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # teardown() is not called after a crash; a stale handler would swallow later signals.
        self.uninstall()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        batch_idx = args[-1] if args else 0
        if (batch_idx + 1) % max(1, trainer.accumulate_grad_batches):
            return  # mid-accumulation: not a resumable point
        stop = self.received is not None
        if trainer.world_size > 1:  # a collective: every rank must take part, signalled or not
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop or self.preempted:
            return
        self.preempted = True
        self.checkpoint_path = self._last_path(trainer)
        trainer.save_checkpoint(self.checkpoint_path)
        log.warning("preempted: saved step %d to %s", trainer.global_step, self.checkpoint_path)
        if trainer.is_global_zero:
            self._requeue()
        trainer.should_stop = True

    # -- helpers --------------------------------------------------------------------------------
    def _last_path(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath) / "last.ckpt"
        callback = trainer.checkpoint_callback
        if callback is not None and getattr(callback, "dirpath", None):
            return Path(callback.dirpath) / "last.ckpt"
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def _requeue(self) -> None:
        job = slurm_job_id()
        if self.requeue == "never":
            return
        if job is None:
            if self.requeue == "always":
                log.warning("callbacks.preemption.requeue=always, but this is not a SLURM job: not requeued")
            return
        requeue_slurm_job(job)


def was_preempted(trainer: L.Trainer) -> bool:
    """Whether a :class:`Preemption` callback stopped this trainer's fit."""
    return any(isinstance(cb, Preemption) and cb.preempted for cb in trainer.callbacks)
