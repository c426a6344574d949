"""In-training quality monitor: a cheap Fréchet distance every N steps, logged as ``monitor/<key>``.

This is a **monitor**, not the paper protocol: a few thousand samples (``num_samples``, default
2000), the training sampler (optionally fewer steps) and the EMA weights, to watch a run improve.
Reported numbers come from ``evaluate.py`` with 50k samples. The key is ``monitor/fd_fmnist``
with the offline Fashion-MNIST classifier and ``monitor/fid`` with Inception features.

Reference statistics come from the same cache as ``evaluate.py`` (``reference.py``), computed on
first use from the run's own data config. Every rank generates its share of the samples and gets
the same value (``evaluation/distributed.py``).

Enable it with ``python train.py "callbacks=[default,fid_monitor]"`` (settings:
``callbacks.fid_monitor.every_n_steps=...``; see ``configs/callbacks/fid_monitor.yaml``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.evaluation.extractors import build_feature_extractor
from spectral_diffusion.evaluation.metrics import generated_features
from spectral_diffusion.evaluation.reference import reference_features
from spectral_diffusion.training.callbacks import find_ema

log = logging.getLogger(__name__)


class FrechetMonitor(L.Callback):
    """Every ``every_n_steps`` optimizer steps, the Fréchet distance of generated samples to the data.

    Args:
        every_n_steps: interval in optimizer steps (0: never).
        num_samples: generated samples per measurement.
        feature_extractor: ``fmnist_classifier`` (logs ``monitor/fd_fmnist``) or ``inception`` (``monitor/fid``).
        weights_path: the extractor's weights (``None``: its default).
        cache_dir: where reference statistics are cached (shared with ``evaluate.py``).
        split: reference split of the run's data, ``val`` or ``train``.
        reference_images: images of the split to use (``None``: all).
        batch_size: samples per sampling batch.
        sampler_steps: sampler steps (``None``: the module's sampler as configured).
        seed: sample ``i`` is seeded ``seed + i``, the same at every measurement.
        data: a ``data/`` config for the reference (``None``: the run's own, from the module).
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 2000,
        feature_extractor: str = "fmnist_classifier",
        weights_path: str | None = None,
        cache_dir: str = "data/reference_stats",
        split: str = "val",
        reference_images: int | None = None,
        batch_size: int = 250,
        sampler_steps: int | None = None,
        seed: int = 0,
        data: dict[str, Any] | None = None,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"callbacks.fid_monitor.num_samples={num_samples} must be at least 2")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.feature_extractor = feature_extractor
        self.weights_path = weights_path
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.reference_images = reference_images
        self.batch_size = batch_size
        self.sampler_steps = sampler_steps
        self.seed = seed
        self.data = data
        self._extractor = None
        self._reference = None
        self.history: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def _prepare(self, pl_module: L.LightningModule) -> None:
        if self._extractor is None:
            self._extractor = build_feature_extractor(self.feature_extractor, self.weights_path, pl_module.device)
        if self._reference is None:
            data = self.data if self.data is not None else pl_module.run_config.get("data")
            if not data:
                raise ValueError(
                    "FrechetMonitor needs a data config for its reference statistics: the module has no run "
                    "config with `data`; pass callbacks.fid_monitor.data=..."
                )
            data_cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(data), resolve=True))
            self._reference, _, _ = reference_features(
                data_cfg, self._extractor, self.cache_dir, self.split, self.reference_images
            )

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Generate, extract, compare; log ``monitor/<key>`` and return the distance."""
        self._prepare(pl_module)
        sampler = pl_module.sampler
        if self.sampler_steps is not None:
            sampler = copy.copy(sampler)
            sampler.set_timesteps(self.sampler_steps)
        model = ModelBundle(
            network=pl_module.net,
            diffusion=pl_module.diffusion,
            first_stage=pl_module.first_stage,
            shape=tuple(pl_module.sample_shape),
            num_classes=getattr(pl_module.net, "num_classes", None),
        )
        ema = find_ema(trainer)
        context = ema.averaged_weights(pl_module) if ema is not None else contextlib.nullcontext()
        was_training = pl_module.net.training
        with context:
            pl_module.net.eval()
            try:
                generated, _, seconds = generated_features(
                    model, sampler, self._extractor, self.num_samples, self.seed, self.batch_size, pl_module.device
                )
            finally:
                pl_module.net.train(was_training)
        value = generated.stats.frechet_distance(self._reference.stats)
        key = f"monitor/{self._extractor.metric_key}"
        pl_module.log(key, value, on_step=True, on_epoch=False)
        self.history.append((trainer.global_step, value))
        log.info(
            "%s = %.3f at step %d (%d samples, %.0f s; a monitor, not the FID-50k protocol)",
            key,
            value,
            trainer.global_step,
            self.num_samples,
            seconds,
        )
        return value
