"""Shared fixtures: tiny data sets in their real on-disk formats, and composed Hydra configs."""

from __future__ import annotations

import gzip
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from spectral_diffusion.utils.run import register_resolvers

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
register_resolvers()
# Tests start LitData's shard writers (and the streaming DDP test its ranks) from a fork server: fresh
# processes forked from one that imported these once, fast to start and free of this process's threads.
# (A module that is not installed is skipped by the server.)
multiprocessing.set_forkserver_preload(["torch", "litdata", "spectral_diffusion.data.shards"])


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file, exactly as the Fashion-MNIST files are laid out."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Fashion-MNIST in IDX format: 64 train and 32 test images of simple class-dependent shapes."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 32)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, label in enumerate(labels):
            images[i, 4:24, 4 + label : 14 + label] = 200  # a bar whose position encodes the class
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def compose_config(config_name: str, tmp_path: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` as Hydra would, with every output under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=overrides or [])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.num = 0
        if "paths" in cfg and not any(o.startswith("paths.output_dir=") for o in overrides or []):
            cfg.paths.output_dir = str(tmp_path / "run")  # the run directory Hydra would have made
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def train_cfg(tmp_path: Path, fmnist_root: Path):
    """A factory of tiny, CPU-only, offline train configs: ``train_cfg("model=...", ...)``."""

    def make(*overrides: str) -> DictConfig:
        base = [
            "debug=tiny",
            f"data.root={fmnist_root}",
            "data.download=false",
            "callbacks.progress=null",
            "logger=csv",
        ]
        return compose_config("train", tmp_path, base + list(overrides))

    return make


def compose_in_workdir(config_name: str, workdir: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` as ``python SCRIPT.py OVERRIDES`` started in ``workdir`` would.

    Unlike :func:`compose_config`, the run directory is the one the configs name (``paths.output_dir``,
    by default ``<workdir>/logs/<task_name>/<run_name>``), so that a later command finds an earlier
    one's outputs at the relative paths the README gives. Relative paths in ``overrides`` are read
    from the current directory: chdir into ``workdir`` (``monkeypatch.chdir``) before running.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=overrides or [])
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(workdir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    # What Hydra's run_job does next: resolve hydra.run.dir (paths.output_dir) and make it the job's directory.
    run_dir = Path(workdir, str(OmegaConf.select(cfg, "hydra.run.dir")))
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


#: evaluate.py overrides that make KID, throughput and the spectral report cheap enough for a test.
CHEAP_METRIC_OVERRIDES = [
    "metrics.kid.subset_size=4",
    "metrics.kid.num_subsets=3",
    "metrics.throughput.batch_size=2",
    "metrics.spectral.num_images=4",
    "metrics.spectral.timesteps=[900,10]",
    "metrics.spectral.num_bands=4",
]


def slurm_stand_ins(bin_dir: Path, captured: Path) -> None:
    """``sbatch`` (copies its script to ``captured``, prints no job id) and ``srun`` in ``bin_dir``."""
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {captured}\necho "no job id here"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit looks for it before submitting
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
