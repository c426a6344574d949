"""Shared fixtures: tiny data sets in their real on-disk formats, and composed Hydra configs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from spectral_diffusion.utils.run import register_resolvers

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
register_resolvers()


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
            "callbacks.rich_progress_bar=null",
            "logger=csv",
        ]
        return compose_config("train", tmp_path, base + list(overrides))

    return make
