"""The command line: one message for user errors, dry runs that write nothing, one folder per run, progress."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from spectral_diffusion.training.progress import StepProgress, format_duration
from spectral_diffusion.utils.cli import is_dry_run
from spectral_diffusion.utils.errors import UserError, message_of, user_error

from .train_subprocess import REPO, tiny_overrides


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update(OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def test_a_user_error_is_one_message_and_the_traceback_waits_for_hydra_full_error(tmp_path):
    args = ("train.py", f"paths.root_dir={tmp_path}", f"data.root={tmp_path}/no_such_dir", "data.download=false")
    plain = run_cli(*args)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    error_lines = [line for line in plain.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "no_such_dir" in error_lines[0] and "Fashion-MNIST" in error_lines[0]
    assert "HYDRA_FULL_ERROR=1" in plain.stderr
    log_file = tmp_path / "logs" / "train" / "quickstart" / "train.log"
    assert "no_such_dir" in log_file.read_text()  # the run's log keeps the message too

    full = run_cli(*args, env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "DataNotFoundError" in full.stderr


def test_dry_run_prints_the_real_run_directory_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli(str(REPO / "train.py"), "dry_run=true", "run_name=probe", cwd=work)
    assert result.returncode == 0, result.stderr
    assert f"output_dir: {work}/logs/train/probe" in result.stdout
    assert list(work.iterdir()) == []


def test_paths_output_dir_holds_everything_the_run_writes(tmp_path, fmnist_root):
    run_dir = tmp_path / "elsewhere"
    overrides = tiny_overrides(fmnist_root, run_dir, "trainer.max_steps=1")
    result = run_cli("train.py", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {".hydra", "train.log", "checkpoints", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    # paths.root_dir is run_dir's parent: nothing went to its logs/ (the default run directory's parent)
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["dry_run=true"], True),
        (["dry_run=True", "model=fmnist_sd"], True),
        (["+dry_run=yes"], True),
        (["dry_run=true", "dry_run=false"], False),  # the last one wins, as in Hydra
        (["dry_run=true", "-m"], False),  # a sweep's dry run is Hydra's business
        (["run_name=dry_run=true"], False),
        ([], False),
    ],
)
def test_dry_run_is_read_from_the_overrides(argv, expected):
    assert is_dry_run(argv) is expected


def test_user_errors_are_unwrapped_from_hydra_and_classified():
    class BugInCode(RuntimeError):
        pass

    class BadCheckpoint(UserError, RuntimeError):
        pass

    wrapped = InstantiationException("Error in call to target 'x.Y'")
    wrapped.__cause__ = ValueError("data.batch_size=0 must be positive")
    assert message_of(user_error(wrapped)) == "data.batch_size=0 must be positive"
    assert user_error(BugInCode("index out of range")) is None
    assert user_error(BadCheckpoint("cannot read x.ckpt")) is not None
    with pytest.raises(MissingMandatoryValue) as missing:
        OmegaConf.create({"teacher": {"ckpt_path": "???"}}).teacher.ckpt_path  # noqa: B018
    message = message_of(user_error(missing.value))
    assert "teacher.ckpt_path" in message and "\n" not in message and "object_type" not in message


class _TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 2)), batch_size=2)


def fit_with(progress: StepProgress, tmp_path: Path, max_steps: int = 6) -> None:
    trainer = L.Trainer(
        max_steps=max_steps,
        callbacks=[progress],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(_TinyModule())


def test_progress_without_a_terminal_logs_steps_of_max_steps(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="spectral_diffusion.training.progress"):
        fit_with(StepProgress(log_every_s=0, tty=False), tmp_path)  # 6 steps over 2 epochs of 4 batches
    lines = [r.getMessage() for r in caplog.records if r.name == "spectral_diffusion.training.progress"]
    assert lines[0] == "training from step 0 to 6"
    assert [line.split(" | ")[0] for line in lines[1:]] == [f"step {s}/6 ({100 * s / 6:.0f}%)" for s in range(1, 7)] + [
        "step 6/6 (100%)"
    ]
    assert "ETA" in lines[-1] and "loss" in lines[-1] and "steps/s" in lines[-1]


def test_progress_on_a_terminal_is_one_bar_over_the_run(tmp_path):
    stream = io.StringIO()
    fit_with(StepProgress(tty=True, stream=stream), tmp_path)
    text = stream.getvalue()
    assert "6/6" in text and "step" in text and "Epoch" not in text


def test_progress_status_line_of_a_resumed_run():
    progress = StepProgress()
    progress._total, progress._start_step, progress._start_time = 1200, 400, 0.0
    trainer = SimpleNamespace(global_step=600, callback_metrics={"train/loss": torch.tensor(0.04213)})
    assert progress.status(trainer, now=100.0) == (
        "step 600/1200 (50%) | 2.00 steps/s | loss 0.04213 | elapsed 1m40s | ETA 5m00s"
    )
    assert format_duration(3725) == "1h02m" and format_duration(7) == "7s"
