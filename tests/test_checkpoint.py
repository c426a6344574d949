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


KILLED_MID_SAVE = """
import os, signal, sys
import torch
from spectral_diffusion.utils.checkpoint import AtomicCheckpointIO

def killed_while_writing(obj, f, *args, **kwargs):
    f.write(b"the first bytes of a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # no finally block, no cleanup: a real kill

torch.save = killed_while_writing
AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, sys.argv[1])
"""


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_usable(tmp_path):
    """~9 s: a child process (importing torch and Lightning) is killed with SIGKILL inside torch.save."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.run(
        [sys.executable, "-c", KILLED_MID_SAVE, str(path)], cwd=repo, capture_output=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.tmp-")  # the torn write, beside it
    assert io.load_checkpoint(path)["global_step"] == 1
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(3))
    io.save_checkpoint({"global_step": 3, "w": torch.ones(3)}, path)  # the next save clears the leftover
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 3
