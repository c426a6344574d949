"""Train the Fashion-MNIST classifier whose features the offline Fréchet distance uses.

    python scripts/train_fid_classifier.py                        # the default weights, into the cache
    python scripts/train_fid_classifier.py output=checkpoints/cls.pt epochs=8 data_root=DIR threads=4

The config is ``configs/train_fid_classifier.yaml``. ``evaluate.py`` and the FD monitor train the
default weights by themselves on first use (``spectral_diffusion/evaluation/fmnist_weights.py``);
with no overrides this script writes bitwise the same file, so it is for retraining them, for
another location (``output=PATH``), another recipe, or a copy of the data that is not in the
standard places (``data_root=DIR``).

Trains :class:`~spectral_diffusion.evaluation.fmnist_classifier.FMNISTClassifier` on the
Fashion-MNIST train split, deterministically, and measures its accuracy on the test split. With the
defaults: 92.38% test accuracy, in 3 minutes on the idle 2-core CPU (channels-last). Writes, each atomically:

- ``output``: the weights, a plain state dict read by ``FMNISTFeatureExtractor`` with
  ``torch.load(weights_only=True)`` (default: the per-user cache, where
  ``metrics.fid.weights_path=null`` finds them);
- the same path with ``.json``: test accuracy, the recipe, wall time, thread count, torch
  version, weights hash, git revision.

Exit status: 0; 1 (after saving) if the test accuracy is below ``min_test_accuracy``; 2 for a
config that cannot work or data that cannot be found, with one message naming the key or the
remedy (``utils/cli.py``, as for every entry point).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from spectral_diffusion.data.fashion_mnist import locate_fashion_mnist
from spectral_diffusion.evaluation.classifier_training import ClassifierRecipe, train_and_save
from spectral_diffusion.evaluation.fmnist_classifier import DEFAULT_WEIGHTS
from spectral_diffusion.evaluation.fmnist_weights import cached_weights_path
from spectral_diffusion.utils.cli import report_user_errors, run
from spectral_diffusion.utils.run import register_resolvers, task_wrapper

log = logging.getLogger("train_fid_classifier")
register_resolvers()


class ConfigError(ValueError):
    """The config asks for something this script cannot do (the message names the key)."""


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return value


def recipe_from(cfg: DictConfig) -> ClassifierRecipe:
    """The training recipe of the config, each key checked."""
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ConfigError(f"seed={cfg.seed!r} must be an integer")
    if isinstance(cfg.lr, bool) or not isinstance(cfg.lr, (int, float)) or not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr!r} must be a positive number, e.g. lr=0.003")
    try:
        device = torch.device(str(cfg.device))
    except RuntimeError as err:
        raise ConfigError(f"device={cfg.device!r} is not a torch device (cpu, cuda, cuda:1, ...): {err}") from err
    return ClassifierRecipe(
        epochs=_positive_int(cfg, "epochs"),
        seed=cfg.seed,
        batch_size=_positive_int(cfg, "batch_size"),
        lr=float(cfg.lr),
        threads=_positive_int(cfg, "threads"),
        device=str(device),
    )


def output_path(cfg: DictConfig) -> Path:
    """``output``, or the cached default weights for ``null``."""
    if cfg.output is None:
        return cached_weights_path()
    path = Path(str(cfg.output)).expanduser()
    if path.suffix != ".pt":
        raise ConfigError(f"output={cfg.output}: the weights file must end in .pt (its record goes beside it as .json)")
    return path


@task_wrapper
def train_fid_classifier(cfg: DictConfig) -> dict[str, Any]:
    """Train, test and write the weights and their record; return the record."""
    recipe, output = recipe_from(cfg), output_path(cfg)
    folder = locate_fashion_mnist(cfg.data_root, download=cfg.download, download_dir=cfg.paths.data_dir)
    log.info("Fashion-MNIST from %s; %s; writing %s", folder, recipe, output)
    if cfg.output is None and DEFAULT_WEIGHTS.is_file():
        log.warning(
            "%s exists and is used before the cache: evaluations will keep using it, not the weights trained now",
            DEFAULT_WEIGHTS.absolute(),
        )
    record = train_and_save(folder, output, recipe)
    log.info("wrote %s (sha256 %s) and %s", output, record["weights_sha256"][:12], output.with_suffix(".json"))
    if record["test_accuracy"] < cfg.min_test_accuracy:
        log.error(
            "test accuracy %.4f is below min_test_accuracy=%s: train longer (epochs=...)",
            record["test_accuracy"],
            cfg.min_test_accuracy,
        )
    return record


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_fid_classifier")
@report_user_errors
def main(cfg: DictConfig) -> None:
    record = train_fid_classifier(cfg)
    if isinstance(record, dict) and record["test_accuracy"] < cfg.min_test_accuracy:  # a dict unless a sweep job failed
        sys.exit(1)


if __name__ == "__main__":
    run(main)
