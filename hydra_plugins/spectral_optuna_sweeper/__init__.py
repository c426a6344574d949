"""A Hydra sweeper that runs an Optuna study with today's Optuna (3.x to 5.x).

Why not ``hydra-optuna-sweeper``: it pins ``optuna<3`` (2.10.1, from 2022), whose RDB storage
fails with SQLAlchemy 2 (``AssertionError`` in ``get_current_version``), so a study cannot be kept
in a database and a sweep cannot be resumed; it also aborts the whole sweep on the first failed
trial by default. This plugin keeps the same ``hydra.sweeper`` keys (``params`` in Hydra's sweep
syntax, ``direction``, ``n_trials``, ``n_jobs``, ``storage``, ``study_name``, ``sampler``) on
Optuna's ask-and-tell interface. Select it with ``hydra/sweeper=spectral_optuna``.
"""
