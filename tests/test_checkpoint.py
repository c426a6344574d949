"""Checkpoint safety: atomic writes, weights_only reads, and readable architecture mismatches."""

from __future__ import annotations

import pytest
import torch

from spectral_diffusion.networks import UNet
from spectral_diffusion.utils.checkpoint import (
    AtomicCheckpointIO,
    CheckpointMismatchError,
    load_checkpoint,
    load_network_weights,
)


def test_atomic_save_keeps_previous_checkpoint_when_a_save_dies(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary files left


class Evil:
    """Any user class: unpickling it could run code, so weights_only loading must refuse it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"obj": Evil()}, path)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        load_checkpoint(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_architecture_mismatch_names_keys():
    small = UNet(16, 1, 8, (1, 2), 1, head_channels=8)
    wider = UNet(16, 1, 16, (1, 2), 1, head_channels=8)
    deeper = UNet(16, 1, 8, (1, 2, 2), 1, head_channels=8)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"shape mismatches .*conv_in.weight: checkpoint \(16, 1, 3, 3\) vs model \(8, 1, 3, 3\)",
    ):
        load_network_weights(small, wider.state_dict(), "wide.ckpt")
    with pytest.raises(
        CheckpointMismatchError,
        match=r"in the checkpoint but not in the model \(38\): down_levels.1.resample.conv.weight",
    ):
        load_network_weights(small, deeper.state_dict(), "deep.ckpt")
    load_network_weights(small, UNet(16, 1, 8, (1, 2), 1, head_channels=8).state_dict(), "same.ckpt")
