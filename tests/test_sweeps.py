"""Sweeps and SLURM: grid and Optuna sweeps of train.py, crash isolation, the Pareto script, and
the submitit launcher's SLURM script."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict, read_write

from spectral_diffusion.utils.run import task_wrapper
from tests.conftest import compose_config, slurm_stand_ins

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import pareto  # noqa: E402

optuna = pytest.importorskip("optuna")
from hydra_plugins.spectral_optuna_sweeper.sweeper import SpectralOptunaSweeper, search_space  # noqa: E402

# train.yaml lists `hparams_search: null` in its defaults once the lead adds it; until then the
# group is appended with `+`.
HPARAMS = "hparams_search" if "hparams_search:" in (REPO / "configs" / "train.yaml").read_text() else "+hparams_search"


def run_sweep(tmp_path: Path, fmnist_root: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py -m`` on the tiny data, 2 steps per job, everything under ``tmp_path``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = [
        sys.executable,
        "train.py",
        "-m",
        "debug=tiny",
        f"data.root={fmnist_root}",
        "data.download=false",
        "callbacks.progress=null",
        "callbacks.sample_grid.every_n_steps=0",
        "logger=csv",
        f"paths.log_dir={tmp_path / 'logs'}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        *overrides,
    ]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(autouse=True)
def forget_hydra_config():
    """Leave no (multirun) HydraConfig behind for other tests: task_wrapper reads it."""
    yield
    HydraConfig.instance().cfg = None


# -- task_wrapper ---------------------------------------------------------------------------------
def set_mode(cfg, mode: RunMode, overrides: list[str]) -> None:
    with read_write(cfg.hydra), open_dict(cfg.hydra):  # HydraConfig leaves its node read-only
        cfg.hydra.mode = mode
        cfg.hydra.overrides.task = overrides
    HydraConfig.instance().set_config(cfg)


def test_task_wrapper_returns_nan_in_a_sweep_and_logs_the_overrides(tmp_path, caplog):
    cfg = compose_config("train", tmp_path)
    set_mode(cfg, RunMode.MULTIRUN, ["model.base_channels=3", "seed=7"])

    @task_wrapper
    def crash(cfg):
        raise ValueError("boom")

    value = crash(cfg)
    assert math.isnan(value)
    assert "model.base_channels=3 seed=7" in caplog.text and "boom" in caplog.text


def test_task_wrapper_raises_in_a_single_run_and_passes_exits_through_in_a_sweep(tmp_path):
    cfg = compose_config("train", tmp_path)
    set_mode(cfg, RunMode.RUN, [])

    @task_wrapper
    def crash(cfg):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        crash(cfg)

    # A SystemExit (Lightning's SIGTERMException is one) is not a crash of the job: it ends the process.
    set_mode(cfg, RunMode.MULTIRUN, ["seed=1"])

    @task_wrapper
    def leave(cfg):
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        leave(cfg)
    assert task_wrapper(lambda cfg: 1.5)(cfg) == 1.5


# -- the Optuna sweeper, with a stand-in launcher ------------------------------------------------
def test_search_space_translates_hydra_sweep_syntax():
    distributions, fixed = search_space(
        [
            "module.optimizer.lr=tag(log, interval(1e-4, 3e-3))",
            "model.base_channels=choice(16, 32)",
            "module.warmup_steps=range(0, 400, 100)",
            "loss.alpha=interval(-1.5, 0.0)",
            "trainer.max_steps=100",
            "model.base_channels=choice(8, 24)",  # the last override of a key wins
            "module.warmup_steps=0",
            "module.warmup_steps=range(0, 400, 100)",
            "loss.alpha=interval(-1.5, 0.0)",
            "model.num_res_blocks=choice(1, 2)",
            "model.num_res_blocks=1",
        ]
    )
    lr = distributions["module.optimizer.lr"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 3e-3, True)
    assert distributions["model.base_channels"].choices == (8, 24)
    warmup = distributions["module.warmup_steps"]
    assert (warmup.low, warmup.high, warmup.step) == (0, 300, 100)  # range() excludes its stop
    assert (distributions["loss.alpha"].low, distributions["loss.alpha"].high) == (-1.5, 0.0)
    assert fixed == {"trainer.max_steps": "100", "model.num_res_blocks": "1"}


class FakeLauncher:
    """Runs each trial's overrides through ``objective`` in-process, as Hydra's launchers return them."""

    def __init__(self, objective):
        self.objective = objective
        self.calls: list[tuple[list[tuple[str, ...]], int]] = []

    def launch(self, job_overrides, initial_job_idx):
        self.calls.append((list(job_overrides), initial_job_idx))
        returns = []
        for overrides in job_overrides:
            ret = JobReturn(overrides=list(overrides))
            try:
                ret.return_value, ret.status = (
                    self.objective(dict(o.split("=", 1) for o in overrides)),
                    JobStatus.COMPLETED,
                )
            except Exception as error:  # what run_job records for a job that raised
                ret.return_value, ret.status = error, JobStatus.FAILED
            returns.append(ret)
        return returns


def make_sweeper(tmp_path: Path, objective, **kwargs) -> tuple[SpectralOptunaSweeper, FakeLauncher]:
    options = dict(
        sampler=optuna.samplers.RandomSampler(seed=0),
        direction="minimize",
        storage=None,
        study_name="test",
        n_trials=4,
        n_jobs=2,
        max_failure_rate=1.0,
        params={"x": "interval(-2.0, 2.0)", "c": "choice(ok, crash, nan)", "fixed": "7"},
    )
    sweeper = SpectralOptunaSweeper(**(options | kwargs))
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    sweeper.launcher = FakeLauncher(objective)
    return sweeper, sweeper.launcher


def objective(params: dict[str, str]) -> float:
    assert params["fixed"] == "7"
    if params["c"] == "crash":
        raise RuntimeError("job crashed")
    return float("nan") if params["c"] == "nan" else float(params["x"]) ** 2


def test_optuna_sweeper_records_crashes_and_nan_as_failed_and_goes_on(tmp_path):
    sweeper, launcher = make_sweeper(tmp_path, objective, n_trials=9, n_jobs=3)
    complete = sweeper.sweep([])
    study = sweeper.study
    states = [t.state.name for t in study.trials]
    assert len(states) == 9 and "FAIL" in states and "COMPLETE" in states
    assert len(complete) == states.count("COMPLETE")
    for trial in study.trials:  # every failure is a crash or a NaN, every success an ok trial
        assert (trial.state.name == "COMPLETE") == (trial.params["c"] == "ok")
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(trial.params["x"] ** 2)
    # batches of n_jobs, numbered by trial so that run directories never collide
    assert [(len(o), idx) for o, idx in launcher.calls] == [(3, 0), (3, 3), (3, 6)]
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(t.value for t in study.trials if t.state.name == "COMPLETE")
    assert [t["state"] for t in results["trials"]] == states


def test_optuna_sweeper_continues_a_stored_study_and_can_abort(tmp_path):
    # A stored study (an SQLite file in the hparams_search configs; the e2e test below uses one).
    storage = optuna.storages.InMemoryStorage()
    params = {"x": "interval(-2.0, 2.0)", "c": "choice(ok)", "fixed": "7"}
    sweeper, _ = make_sweeper(tmp_path, objective, storage=storage, params=params)
    sweeper.sweep([])
    again, launcher = make_sweeper(tmp_path, objective, storage=storage, params=params)
    again.sweep([])
    assert launcher.calls[0][1] == 4  # the new trials start after the stored ones
    xs = [t.params["x"] for t in again.study.trials]
    assert len(xs) == 8 and len(set(xs)) == 8  # the reseeded sampler does not repeat itself

    crashing, _ = make_sweeper(tmp_path, objective, max_failure_rate=0.4, params={"x": "interval(0.0, 1.0)", "c": "choice(crash)", "fixed": "7"})  # fmt: skip
    with pytest.raises(RuntimeError, match="max_failure_rate=0.4"):
        crashing.sweep([])
    nothing, _ = make_sweeper(tmp_path, objective, params={"x": "interval(0.0, 1.0)", "c": "choice(nan)", "fixed": "7"})  # fmt: skip
    with pytest.raises(RuntimeError, match="none of the study's 4 trials completed"):
        nothing.sweep([])


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optuna_sweeper_stops_when_an_exhaustive_sampler_has_covered_the_space(tmp_path):
    params = {"x": "choice(1, 2, 3)", "c": "choice(ok)", "fixed": "7"}
    sweeper, launcher = make_sweeper(tmp_path, objective, sampler=optuna.samplers.BruteForceSampler(seed=0), n_trials=10, n_jobs=1, params=params)  # fmt: skip
    sweeper.sweep([])
    assert sorted(t.params["x"] for t in sweeper.study.trials) == [1, 2, 3]
    assert len(launcher.calls) == 3


def test_hparams_search_configs_compose_with_the_sweeper(tmp_path):
    for name in ("fmnist_sd_optuna", "fmnist_sd_distill_optuna"):
        cfg = compose_config("train", tmp_path, [f"{HPARAMS}={name}"])
        sweeper = cfg.hydra.sweeper
        assert sweeper._target_.endswith("SpectralOptunaSweeper") and sweeper.direction == "minimize"
        distributions, _ = search_space([f"{k}={v}" for k, v in sweeper.params.items()])
        assert "module.optimizer.lr" in distributions and distributions["module.optimizer.lr"].log
    distill = compose_config("train", tmp_path, [f"{HPARAMS}=fmnist_sd_distill_optuna"]).hydra.sweeper.params
    assert set(distill) == {
        "module.optimizer.lr",
        "loss.lambda_spatial",
        "loss.lambda_freq",
        "loss.alpha",
        "callbacks.ema.decay",
    }


# -- SLURM ------------------------------------------------------------------------------------------
# Our yaml of the same name as the plugin's node is checked against the plugin's schema (a typo in a
# key fails); Hydra announces that behaviour with a deprecation warning.
@pytest.mark.filterwarnings("ignore:(?s).*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema")
def test_slurm_launcher_writes_the_sbatch_script_lightning_ddp_needs(tmp_path, monkeypatch):
    """The launcher's whole path, Hydra config -> submitit -> sbatch script, with a stand-in sbatch."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate

    cfg = compose_config(
        "train",
        tmp_path,
        [
            "hydra/launcher=submitit_slurm",
            "trainer=ddp",
            "trainer.num_nodes=2",
            "trainer.devices=8",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=600",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
    )
    launcher_cfg = cfg.hydra.launcher
    assert (launcher_cfg.nodes, launcher_cfg.gpus_per_node, launcher_cfg.tasks_per_node) == (2, 8, 8)

    bin_dir, captured = tmp_path / "bin", tmp_path / "captured.sh"
    slurm_stand_ins(bin_dir, captured)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    launcher = instantiate(launcher_cfg)
    launcher.setup(hydra_context=None, task_function=lambda cfg: None, config=cfg)
    import submitit

    with pytest.raises(submitit.core.utils.FailedSubmissionError):
        launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    script = captured.read_text()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",  # one task per GPU: Lightning's DDP under SLURM
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=600",
        "#SBATCH --signal=USR1@300",  # what the preemption callback listens to, not submitit's USR2
        "#SBATCH --requeue",
        "#SBATCH --array=0-1%2",  # a sweep is a job array
    ):
        assert line in script.splitlines(), f"{line!r} not in\n{script}"


# -- end to end through train.py ------------------------------------------------------------------
@pytest.mark.slow
def test_grid_sweep_survives_a_crashing_job_and_pareto_plots_it(tmp_path, fmnist_root):
    """4 jobs, 2 crash (negative lr): the sweep finishes, the 2 others write metrics.json (~15 s)."""
    run_sweep(tmp_path, fmnist_root, "model.base_channels=8,16", "module.optimizer.lr=0.001,-1")
    sweep = tmp_path / "logs" / "train" / "multirun" / "debug_tiny"
    records = {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}
    assert len(records) == 2, sorted(p.name for p in sweep.iterdir())
    for record in records.values():
        assert math.isfinite(record["val/loss"]) and record["gmacs"] > 0 and record["global_step"] == 2
    crashed = [p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit() and p.name not in records]
    assert len(crashed) == 2
    for job in crashed:
        log = (job / "train.log").read_text()
        assert "sweep job failed" in log and "module.optimizer.lr=-1" in log

    result = pareto.make_pareto(compose_config("pareto", tmp_path, [f"dirs={sweep}"]))
    assert result["metric"] == "val/loss"
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (sweep / "pareto.md").read_text().splitlines()[2:]
    assert len(rows) == 2
    gmacs = sorted(record["gmacs"] for record in records.values())
    assert [float(row.split("|")[2]) for row in rows] == pytest.approx(gmacs, rel=1e-3)  # sorted by cost
    assert all("model.base_channels=" in row for row in rows)


@pytest.mark.slow
def test_optuna_sweep_through_train_py(tmp_path, fmnist_root):
    """2 trials of the hparams_search config, one of which crashes (~10 s)."""
    run_sweep(
        tmp_path,
        fmnist_root,
        f"{HPARAMS}=fmnist_sd_optuna",
        "experiment=fmnist_sd",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
        "~hydra.sweeper.sampler.n_startup_trials",
        "model.base_channels=8",
        "model.num_res_blocks=1",
        "module.warmup_steps=0",
        "module.optimizer.lr=choice(0.001,-1.0)",
    )
    sweep = tmp_path / "logs" / "train" / "optuna" / "fmnist_sd_optuna"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert sorted(t["state"] for t in results["trials"]) == ["COMPLETE", "FAIL"]
    assert results["best_params"] == {"module.optimizer.lr": 0.001}
    best = next(t for t in results["trials"] if t["state"] == "COMPLETE")
    assert json.loads((sweep / str(best["number"]) / "metrics.json").read_text())["val/loss"] == pytest.approx(
        results["best_value"]
    )


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(tmp_path, fmnist_root):
    """The submitit launcher's local executor (the SLURM one's twin), 2 jobs in subprocesses (~30 s)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    run_sweep(tmp_path, fmnist_root, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=1,2")
    sweep = tmp_path / "logs" / "train" / "multirun" / "debug_tiny"
    assert len(list(sweep.glob("*/metrics.json"))) == 2
