"""Run bookkeeping: the run directory, its record of config and code version, and resuming."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def git_revision(repo: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """The commit the code runs from and whether the working tree has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def write_run_record(cfg: DictConfig, output_dir: str | Path) -> None:
    """Save the resolved config (``config.yaml``) and the code version (``git.json``) in the run dir."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (output_dir / "git.json").write_text(json.dumps(git_revision(), indent=2) + "\n")


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint this run continues from.

    ``ckpt_path=PATH`` wins. Otherwise, with ``resume=true`` (the default), the run directory's own
    ``checkpoints/last.ckpt``: re-running the same command continues the run. With
    ``resume=false`` a run directory that already holds a checkpoint is refused rather than
    overwritten.
    """
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
        return str(path)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    if cfg.get("resume", True):
        log.info("resuming from %s (set resume=false and a new run_name for a fresh run)", last)
        return str(last)
    raise FileExistsError(
        f"{last} exists and resume=false: this would overwrite that run. Use a new run_name=... "
        f"(or paths.output_dir=...), or resume=true to continue it."
    )


def wandb_offline() -> bool:
    """True unless the user has configured wandb for online use (API key, login, or WANDB_MODE)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" not in netrc.read_text()
    except OSError:
        return True


def register_resolvers() -> None:
    """OmegaConf resolvers used by the configs (idempotent)."""
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Make sure loggers are closed (wandb finishes its run) even when the task crashes.

    A crash still propagates, so a single run fails loudly; Hydra's multirun reports it per job.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
            except ImportError:
                pass

    return wrapped
