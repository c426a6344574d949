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
