"""Run ``train.py`` as a separate process, as a user or a SLURM job would (for kills and DDP)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

#: A callback module the child process imports (``+callbacks.x._target_=sd_test_hooks.NAME``).
HOOKS = textwrap.dedent(
    '''
    import os
    import signal

    import lightning as L


    class SignalAtStep(L.Callback):
        """Send this process ``signame`` when the optimizer step ``step`` is about to run."""

        def __init__(self, step: int, signame: str) -> None:
            self.step, self.signum = step, signal.Signals[signame]

        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == self.step:
                os.kill(os.getpid(), self.signum)
    '''
)


def tiny_overrides(fmnist_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """The tests' tiny CPU configuration, with the run in ``run_dir`` and nothing written elsewhere."""
    return [
        "debug=tiny",
        f"data.root={fmnist_root}",
        "data.download=false",
        "callbacks.progress=null",
        "logger=csv",
        f"paths.output_dir={run_dir}",
        f"paths.root_dir={run_dir.parent}",
        *extra,
    ]


def run_train(overrides: list[str], hooks_dir: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py OVERRIDES`` from the repository root, one CPU thread, hooks importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("WANDB_MODE", None)
    if hooks_dir is not None:
        hooks_dir.mkdir(parents=True, exist_ok=True)
        (hooks_dir / "sd_test_hooks.py").write_text(HOOKS)
        env["PYTHONPATH"] = os.pathsep.join([str(hooks_dir), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def describe(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Bitwise equality of what decides the rest of a run: step, raw and EMA weights, optimizer, schedule."""
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}[{name}] differs"
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert sa["state"].keys() == sb["state"].keys()
        for index in sa["state"]:
            for name, value in sa["state"][index].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][index][name])), (index, name)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def kill_then_rerun(command: list[str], run_dir: Path, kill_step: int, hooks_dir: Path, max_steps: int = 12) -> None:
    """Run ``command`` (writing ``run_dir``) killed with SIGKILL at ``kill_step``, then the same command again.

    The rerun keeps the test callback (a checkpoint may name a class outside the framework only when the
    command names it too), at a step that never comes.
    """
    import signal

    killer = [
        "+callbacks.kill._target_=sd_test_hooks.SignalAtStep",
        f"+callbacks.kill.step={kill_step}",
        "+callbacks.kill.signame=SIGKILL",
    ]
    killed = run_train(command + killer, hooks_dir=hooks_dir)
    assert killed.returncode == -signal.SIGKILL, describe(killed)
    interrupted_at = load(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert interrupted_at <= kill_step < max_steps
    never = [arg.replace(f"step={kill_step}", "step=1000") for arg in killer]
    resumed = run_train(command + never, hooks_dir=hooks_dir)
    assert resumed.returncode == 0, describe(resumed)
