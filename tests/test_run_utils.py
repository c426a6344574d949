"""Run bookkeeping: wandb's online/offline choice and the resume rules."""

from __future__ import annotations

import pytest

from spectral_diffusion.utils.run import wandb_offline


@pytest.mark.parametrize(
    "env,netrc,offline",
    [
        ({}, None, True),
        ({}, "machine api.wandb.ai\n  login user\n  password abc\n", False),
        ({"WANDB_API_KEY": "abc"}, None, False),
        ({"WANDB_MODE": "online"}, None, False),
        ({"WANDB_MODE": "offline", "WANDB_API_KEY": "abc"}, None, True),
        ({"WANDB_MODE": "disabled"}, "machine api.wandb.ai\n", True),
    ],
)
def test_wandb_is_offline_unless_configured(env, netrc, offline, tmp_path, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / ".netrc"
    if netrc is not None:
        path.write_text(netrc)
    monkeypatch.setenv("NETRC", str(path))
    assert wandb_offline() is offline


def test_resumed_run_continues_the_stored_wandb_run():
    from omegaconf import OmegaConf

    from spectral_diffusion.utils.run import continue_logger_runs

    cfg = OmegaConf.create(
        {
            "wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "id": None, "resume": None},
            "csv": {"_target_": "lightning.pytorch.loggers.CSVLogger"},
        }
    )
    continue_logger_runs(cfg, {})
    assert cfg.wandb.id is None  # a fresh run: wandb picks an id
    continue_logger_runs(cfg, {"WandbLogger": "abc123"})
    assert (cfg.wandb.id, cfg.wandb.resume) == ("abc123", "allow")
    assert "id" not in cfg.csv


def test_logger_ids_go_into_checkpoints_and_come_back(tmp_path):
    import torch

    from spectral_diffusion.training.callbacks import LoggerIds
    from spectral_diffusion.utils.run import stored_logger_ids

    class WandbLogger:  # the name is what LoggerIds looks for; no wandb process needed
        version = "run-42"

    class CSVLogger:
        version = "0"

    class Trainer:
        loggers = [WandbLogger(), CSVLogger()]

    checkpoint: dict = {"global_step": 3}
    LoggerIds().on_save_checkpoint(Trainer(), None, checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    assert stored_logger_ids(tmp_path / "last.ckpt") == {"WandbLogger": "run-42"}
    assert stored_logger_ids(None) == {}


def test_metrics_json_is_written_whole(tmp_path):
    import json

    from spectral_diffusion.utils.run import write_metrics

    path = write_metrics(tmp_path / "run", {"val/loss": 0.5, "gmacs": 1.25, "metrics": {"val/loss": 0.5}})
    assert json.loads(path.read_text()) == {"val/loss": 0.5, "gmacs": 1.25, "metrics": {"val/loss": 0.5}}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
