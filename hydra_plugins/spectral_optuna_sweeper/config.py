"""The ``hydra/sweeper=spectral_optuna`` config node (registered when Hydra scans its plugins).

No ``from __future__ import annotations`` and no ``X | None`` here: Hydra loads plugin modules
without putting them in ``sys.modules`` first, and ``dataclasses`` must then see real types, not
strings it would look up there.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore


@dataclass
class SpectralOptunaSweeperConf:
    _target_: str = "hydra_plugins.spectral_optuna_sweeper.sweeper.SpectralOptunaSweeper"
    # Any optuna sampler, built with hydra.utils.instantiate; only `seed` is common to all of them.
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # "minimize" | "maximize", or a list of them for a multi-objective study.
    direction: Any = "minimize"
    # An Optuna storage URL (e.g. sqlite:///path/optuna.db): the study survives the sweep process,
    # and re-running the same command continues it. null: in memory, lost at the end.
    storage: Optional[str] = None  # noqa: UP045
    study_name: Optional[str] = None  # noqa: UP045
    # Trials run by this invocation (a resumed study adds this many more).
    n_trials: int = 20
    # Trials launched together, as one batch of the launcher (parallel under submitit).
    n_jobs: int = 1
    # Abort once more than this fraction of this invocation's trials failed. 1.0: never abort early;
    # a sweep none of whose trials completed still ends with an error.
    max_failure_rate: float = 1.0
    # The search space: {config key: Hydra sweep expression}, e.g.
    #   module.optimizer.lr: tag(log, interval(1e-4, 3e-3))   (float, log scale)
    #   model.base_channels: choice(16, 32, 48)               (categorical)
    #   module.warmup_steps: range(0, 400, 100)               (int, step 100, stop excluded)
    # A plain value is passed to every trial unchanged.
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="spectral_optuna",
    node=SpectralOptunaSweeperConf,
    provider="spectral_optuna_sweeper",
)
