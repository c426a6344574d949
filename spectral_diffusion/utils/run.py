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

from omegaconf import DictConfig, OmegaConf, open_dict

from spectral_diffusion.utils.errors import UserError

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


def checkpoint_step(path: str | Path) -> int:
    """The ``global_step`` stored in a checkpoint (memory-mapped: cheap), or -1 if it cannot be read."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except Exception as err:  # a torn or foreign file must not stop the search for a good one
        log.warning("ignoring unreadable checkpoint %s (%s: %s)", path, type(err).__name__, err)
        return -1


def run_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's resumable checkpoints: ``checkpoints/last.ckpt`` and Lightning's SLURM ``hpc_ckpt_N.ckpt``."""
    output_dir = Path(output_dir)
    candidates = [output_dir / "checkpoints" / "last.ckpt", *sorted(output_dir.glob("hpc_ckpt_*.ckpt"))]
    return [p for p in candidates if p.is_file()]


#: ``resume=`` values: continue if the config is the stored one | continue anyway | never continue.
RESUME_MODES = ("auto", True, False)


class ResumeConfigError(UserError, ValueError):
    """Re-running a run's command with settings that would change the run."""


def resume_mode(cfg: DictConfig) -> str | bool:
    mode = cfg.get("resume", "auto")
    if mode not in RESUME_MODES:
        raise ResumeConfigError(f"resume={mode!r}: use auto (the default), true or false")
    return mode


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint this run continues from.

    ``ckpt_path=PATH`` wins. Otherwise, unless ``resume=false``, the newest of the run directory's
    own ``checkpoints/last.ckpt`` and the ``hpc_ckpt_N.ckpt`` that Lightning's SLURM handler writes
    (by stored step; ``last.ckpt`` on a tie): re-running the same command, or the requeued job,
    continues the run (:func:`check_resume_config` then compares the settings). With
    ``resume=false`` a run directory that already holds a checkpoint is refused rather than overwritten.
    """
    mode = resume_mode(cfg)
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
        return str(path)
    candidates = run_checkpoints(cfg.paths.output_dir)
    if not candidates:
        return None
    last = candidates[0]
    if mode is not False:
        steps = {path: checkpoint_step(path) for path in candidates}
        newest = max(candidates, key=lambda path: steps[path])  # max keeps the first (last.ckpt) on ties
        if steps[newest] < 0:
            raise FileExistsError(
                f"no readable checkpoint in {Path(cfg.paths.output_dir)} ({', '.join(map(str, candidates))}); "
                "pass ckpt_path=... or start a new run_name=..."
            )
        log.info("resuming from %s, step %d (run_name=NAME starts a new run)", newest, steps[newest])
        return str(newest)
    raise FileExistsError(
        f"{last} exists and resume=false: this would overwrite that run. Use a new run_name=... "
        f"(or paths.output_dir=...), or resume=true to continue it."
    )


#: Config keys that change where a run writes, how it logs or shows progress, or how it reads its
#: data, but not what it computes: they may differ when a run is resumed. Everything else must match.
RUN_NEUTRAL_KEYS = (
    "hydra",
    "paths",
    "logger",
    "task_name",
    "run_name",
    "resume",
    "ckpt_path",
    "dry_run",
    "optimized_metric",
    "latent_stats_samples",  # a resumed run restores its latent statistics from the checkpoint
    "data.root",
    "data.download",
    "data.download_dir",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "trainer.val_check_interval",
    "trainer.limit_val_batches",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.num_sanity_val_steps",
    "callbacks",  # checkpoints, grids, progress, monitors, preemption: everything but the EMA (below)
)


#: Keys below a run-neutral key that still change the result: the EMA's average is what is sampled.
RESULT_KEYS = ("callbacks.ema",)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` of nested mappings; lists are leaves."""
    if not isinstance(config, dict) or not config:
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: stored -> current"`` for every key that is not run-neutral and differs."""

    def neutral(key: str) -> bool:
        return _under(key, RUN_NEUTRAL_KEYS) and not _under(key, RESULT_KEYS)

    old, new = flatten(stored), flatten(current)
    missing = "(not set)"
    return [
        f"{key}: {old.get(key, missing)} -> {new.get(key, missing)}"
        for key in sorted(set(old) | set(new))
        if not neutral(key) and old.get(key, missing) != new.get(key, missing)
    ]


def check_resume_config(
    stored: dict[str, Any] | None, current: dict[str, Any], ckpt_path: str | Path, mode: str | bool, limit: int = 12
) -> None:
    """Refuse to continue a run under settings that differ from the ones it was made with.

    ``resume=auto`` (the default) refuses and lists the differing keys; ``resume=true`` continues
    with the new settings and logs them. A checkpoint without a stored config is not compared.
    """
    if stored is None:
        return
    differences = config_differences(stored, current)
    if not differences:
        return
    shown = "\n  ".join(differences[:limit]) + (
        f"\n  ... and {len(differences) - limit} more" if len(differences) > limit else ""
    )
    if mode is True:
        log.warning("resume=true: continuing %s with changed settings:\n  %s", ckpt_path, shown)
        return
    raise ResumeConfigError(
        f"{ckpt_path} was made with other settings than this command asks for:\n  {shown}\n"
        "resume=true continues that run with the new settings; run_name=NAME (or paths.output_dir=DIR) "
        "starts a new run."
    )


def drop_file_log_handlers() -> list[logging.Handler]:
    """Detach the root logger's file handlers: a non-zero DDP rank must not write the run's log file."""
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
    return handlers


def stored_logger_ids(ckpt_path: str | Path | None) -> dict[str, str]:
    """The loggers' run ids saved in a checkpoint (``training/callbacks.py: LoggerIds``), or ``{}``."""
    if not ckpt_path:
        return {}
    from spectral_diffusion.utils.checkpoint import LOGGER_IDS_KEY, load_checkpoint

    try:
        checkpoint = load_checkpoint(ckpt_path, mmap=True)
    except Exception:  # resuming will report an unreadable checkpoint properly
        return {}
    ids = checkpoint.get(LOGGER_IDS_KEY, {})
    return {str(k): str(v) for k, v in ids.items()} if isinstance(ids, dict) else {}


def continue_logger_runs(logger_cfg: DictConfig | None, ids: dict[str, str]) -> None:
    """Point the configured wandb logger at the stored run id, so a resumed run continues that run."""
    if not logger_cfg or "WandbLogger" not in ids:
        return
    for entry in logger_cfg.values():
        if entry is not None and str(entry.get("_target_", "")).endswith("WandbLogger") and not entry.get("id"):
            with open_dict(entry):
                entry.id = ids["WandbLogger"]
                entry.resume = "allow"
            log.info("continuing wandb run %s", entry.id)


def write_metrics(output_dir: str | Path, record: dict[str, Any]) -> Path:
    """``<run dir>/metrics.json``: what sweeps and ``scripts/pareto.py`` read (written atomically)."""
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)
    return path


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


def job_output_dir(run_dir: str) -> str:
    """This job's directory: Hydra's, once Hydra has made it; before that ``run_dir``.

    ``hydra.run.dir`` defaults to ``paths.output_dir``, which defaults to this resolver with
    ``logs/<task_name>/<run_name>``: Hydra resolves its directory from ``run_dir`` and creates it,
    and from then on everything reads Hydra's. So ``paths.output_dir=X`` and ``hydra.run.dir=X``
    both move the whole run, ``.hydra/`` and the log included, and in a multirun (``-m``) each job's
    run directory is Hydra's numbered subdirectory.
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_dir = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None, throw_on_missing=False)
        if hydra_dir:
            return str(hydra_dir)
    return str(run_dir)


def launch_dir() -> str:
    """The directory the command was started from: Hydra's ``runtime.cwd`` where Hydra has set it.

    ``${hydra:runtime.cwd}`` alone cannot be resolved while a multirun's sweeper works out its
    sweep directory (``hydra.sweep.dir`` is below ``paths.log_dir``), before any job's Hydra config
    exists; there the working directory is the same place, as jobs never change it (``hydra.job.chdir: false``).
    """
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = OmegaConf.select(HydraConfig.get(), "runtime.cwd", default=None, throw_on_missing=False)
        if cwd:
            return str(cwd)
    return os.getcwd()


def register_resolvers() -> None:
    """OmegaConf resolvers used by the configs (idempotent)."""
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("job_output_dir"):
        OmegaConf.register_new_resolver("job_output_dir", job_output_dir)
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", launch_dir)


def multirun_overrides() -> list[str] | None:
    """The job's override list when it runs inside a Hydra multirun (``-m``), else ``None``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.get("mode") != RunMode.MULTIRUN:
        return None
    return list(hydra_cfg.overrides.task)


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Close the loggers (wandb finishes its run) even when the task crashes, and keep sweeps alive.

    - In a single run a crash propagates: the run fails loudly.
    - In a multirun (a grid or Optuna sweep, locally or through submitit) one job's crash must not
      end the whole sweep. The exception is logged with the job's overrides, so the failing point
      of the search space can be found and re-run, and the job returns NaN. The Optuna sweeper
      (``hydra_plugins/spectral_optuna_sweeper``) records a NaN trial as failed.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        failed = False
        try:
            return task(cfg)
        except Exception:
            failed = True
            overrides = multirun_overrides()
            if overrides is None:
                raise
            log.exception("sweep job failed (returning NaN, the sweep goes on); its overrides: %s", " ".join(overrides))
            return float("nan")
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1 if failed else 0)
            except ImportError:
                pass

    return wrapped
