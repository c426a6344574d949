"""The in-training FrechetMonitor: composes into train.py's callbacks and logs monitor/fd_fmnist."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from spectral_diffusion.evaluation.fmnist_classifier import FMNISTClassifier
from spectral_diffusion.training.monitor import FrechetMonitor
from train import instantiate_collection, train


def test_monitor_composes_and_logs_during_training(train_cfg, tmp_path, caplog):
    torch.manual_seed(0)
    weights = tmp_path / "tiny_classifier.pt"
    torch.save(FMNISTClassifier(width=4, num_features=8).state_dict(), weights)
    cfg = train_cfg(
        "callbacks=[default,fid_monitor]",
        "callbacks.progress=null",
        "callbacks.fid_monitor.every_n_steps=2",
        "callbacks.fid_monitor.num_samples=6",
        "callbacks.fid_monitor.batch_size=3",
        "callbacks.fid_monitor.sampler_steps=2",
        "callbacks.fid_monitor.reference_images=16",
        f"callbacks.fid_monitor.weights_path={weights}",
        f"callbacks.fid_monitor.cache_dir={tmp_path / 'cache'}",
    )
    monitors = [c for c in instantiate_collection(cfg.callbacks) if isinstance(c, FrechetMonitor)]
    assert len(monitors) == 1 and monitors[0].num_samples == 6 and monitors[0].split == "val"

    with caplog.at_level(logging.INFO, logger="spectral_diffusion.training.monitor"):
        train(cfg)
    measured = [r.getMessage() for r in caplog.records if r.getMessage().startswith("monitor/fd_fmnist =")]
    assert [m.split(" at step ")[1].split()[0] for m in measured] == ["2", "4"]  # every 2 of the 4 steps
    assert all("not the FID-50k protocol" in m for m in measured)
    rows = [row for path in Path(cfg.paths.output_dir).rglob("metrics.csv") for row in csv.DictReader(open(path))]
    assert any(float(row.get("monitor/fd_fmnist") or 0) > 0 for row in rows)  # reached the logger
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1  # one reference, computed once and reused
