"""An Optuna study as a Hydra sweeper: each trial is one job of the configured launcher.

The search space is written in Hydra's own sweep syntax (``hydra.sweeper.params`` and command-line
sweep overrides), translated to Optuna distributions by :func:`search_space`. Trials are asked in
batches of ``n_jobs``, launched through whatever launcher is configured (the basic one, or
submitit on SLURM), and told back with their job's return value.

A job that crashed (its status is FAILED, or it returned a non-finite or non-numeric value: the
project's ``task_wrapper`` turns a crash inside a sweep into NaN) is told as a FAILED trial and
logged with its overrides; the sweep goes on (see ``max_failure_rate``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class SearchSpaceError(ValueError):
    """A ``hydra.sweeper.params`` entry that Optuna cannot sample (the message names the key)."""


def _distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (``choice``, ``range``, ``interval``, ``tag(log, ...)``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    value = override.value()
    if override.is_choice_sweep():
        assert isinstance(value, ChoiceSweep)
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = list(override.sweep_iterator())
        if not values:
            raise SearchSpaceError(f"hydra.sweeper.params.{key}: the range {override.input_line} is empty")
        if value.shuffle:
            return CategoricalDistribution(values)
        # Hydra's range excludes its stop, as Python's does: the last value is the upper bound.
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            return IntDistribution(values[0], values[-1], step=value.step)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if log_scale and (value.start <= 0 or value.end <= 0):
            raise SearchSpaceError(
                f"hydra.sweeper.params.{key}: a log interval needs positive bounds, got {override.input_line}"
            )
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise SearchSpaceError(
        f"hydra.sweeper.params.{key}={override.input_line}: use choice(...), range(...), interval(...) "
        "or tag(log, interval(...)), or a plain value"
    )


def search_space(arguments: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split ``key=expression`` overrides into Optuna distributions and fixed values.

    Sweep expressions become distributions; plain values (``trainer.max_steps=100``) are passed to
    every trial as they were written. The last override of a key wins, so the command line (which
    comes after ``hydra.sweeper.params``) can narrow a sweep or pin a swept key to one value.
    """
    distributions: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = override.get_key_element()
        if override.is_sweep_override():
            distributions[key] = _distribution(override)
            fixed.pop(key, None)
        else:
            fixed[key] = override.get_value_element_as_str()
            distributions.pop(key, None)
    return distributions, fixed


def trial_overrides(params: dict[str, Any], fixed: dict[str, str]) -> tuple[str, ...]:
    """The override list of one trial: its sampled values, then the fixed ones."""
    return tuple(f"{key}={value}" for key, value in {**params, **fixed}.items())


def job_value(ret: JobReturn, n_objectives: int) -> list[float] | str:
    """The trial's objective values, or the reason it failed (a string)."""
    if ret.status != JobStatus.COMPLETED:
        return f"the job raised {ret._return_value!r}"
    value = ret.return_value
    values = list(value) if n_objectives > 1 and isinstance(value, (list, tuple)) else [value]
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        return f"the job returned {value!r}, not a number (is optimized_metric logged?)"
    if len(floats) != n_objectives:
        return f"the job returned {len(floats)} values for {n_objectives} objectives"
    if not all(math.isfinite(v) for v in floats):
        return f"the job returned {value!r} (a crash in a sweep job returns NaN; see its log)"
    return floats


def tell(study: Any, trial: Any, **kwargs: Any) -> bool:
    """``study.tell``; True when the sampler asked the study to stop (its search space is used up).

    Exhaustive samplers (``BruteForceSampler``, ``GridSampler``) call ``study.stop()`` after the
    last point, which Optuna only allows inside ``optimize``: outside it raises, after the trial
    has been stored.
    """
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise
        return True
    return False


class SpectralOptunaSweeper(Sweeper):
    """Hydra sweeper running ``n_trials`` Optuna trials (see ``config.py`` for the keys)."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,  # an Optuna storage URL, a storage object, or None (in memory)
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | dict[str, str] | None,
    ) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper.n_trials={n_trials} and n_jobs={n_jobs} must be at least 1")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate} must be in [0, 1]")
        self.sampler = sampler
        directions = (
            list(direction) if isinstance(direction, Sequence) and not isinstance(direction, str) else [direction]
        )
        self.directions = [str(d) for d in directions]
        for d in self.directions:
            if d not in ("minimize", "maximize"):
                raise ValueError(f"hydra.sweeper.direction={d}: use minimize or maximize")
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.study: Any = None  # the optuna.Study of the last sweep()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _study(self) -> Any:
        import optuna

        if self.storage and str(self.storage).startswith("sqlite:///"):
            # SQLite does not create the folder of its database file.
            Path(str(self.storage)[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=self.sampler,
            directions=self.directions,
            load_if_exists=True,
        )
        if study.trials:
            # A seeded sampler would start its random draws over and repeat the first trials.
            study.sampler.reseed_rng()
            log.info("continuing study %r after its %d trials", study.study_name, len(study.trials))
        return study

    def sweep(self, arguments: list[str]) -> list[Any]:
        import optuna
        from optuna.trial import TrialState

        assert self.config is not None and self.launcher is not None
        distributions, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if not distributions:
            raise SearchSpaceError(
                "the Optuna sweep has nothing to search: give hydra.sweeper.params (e.g. in an hparams_search "
                "config) or sweep overrides such as module.optimizer.lr=interval(1e-4,1e-3)"
            )
        study = self.study = self._study()
        log.info(
            "Optuna study %r (storage %s, %s, %s): %d new trials over %s; fixed %s",
            study.study_name,
            self.storage or "in memory",
            type(study.sampler).__name__,
            "/".join(self.directions),
            self.n_trials,
            sorted(distributions),
            fixed,
        )
        failed: list[tuple[int, str, tuple[str, ...]]] = []
        launched = 0
        while launched < self.n_trials:
            batch = min(self.n_jobs, self.n_trials - launched)
            trials = [study.ask(distributions) for _ in range(batch)]
            overrides = [trial_overrides(trial.params, fixed) for trial in trials]
            # Job numbers are trial numbers: a resumed study writes new run directories, not old ones.
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            exhausted = False
            for trial, trial_args, ret in zip(trials, overrides, returns, strict=True):
                outcome = job_value(ret, len(self.directions))
                if isinstance(outcome, str):
                    exhausted |= tell(study, trial, state=TrialState.FAIL)
                    failed.append((trial.number, outcome, trial_args))
                    log.warning("trial %d failed: %s; overrides: %s", trial.number, outcome, " ".join(trial_args))
                else:
                    exhausted |= tell(study, trial, values=outcome)
            launched += batch
            if exhausted:
                log.info("the sampler has covered the whole search space after %d trials", launched)
            if len(failed) / launched > self.max_failure_rate:
                raise RuntimeError(
                    f"{len(failed)} of {launched} trials failed, more than hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate}: " + "; ".join(f"#{n}: {why}" for n, why, _ in failed)
                )
            if exhausted:
                break
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            raise RuntimeError(
                f"none of the study's {len(study.trials)} trials completed: "
                + "; ".join(f"#{n}: {why} ({' '.join(args)})" for n, why, args in failed)
            )
        self._write_results(study, optuna)
        return complete

    def _write_results(self, study: Any, optuna: Any) -> None:
        """``optimization_results.yaml`` in the sweep directory: the best trial(s) and every trial."""
        assert self.config is not None
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "directions": self.directions}
        if len(self.directions) == 1:
            results |= {"best_params": study.best_trial.params, "best_value": study.best_trial.value}
            log.info(
                "best trial #%d: value %s, params %s", study.best_trial.number, study.best_value, study.best_params
            )
        else:
            results["pareto_front"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
        results["trials"] = [
            {"number": t.number, "state": t.state.name, "values": t.values, "params": t.params}
            for t in study.get_trials(deepcopy=False)
        ]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
