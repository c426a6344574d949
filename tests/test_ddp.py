"""The global batch arithmetic, and DDP on CPU (gloo): one run directory, the same gradients as one process."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch

from spectral_diffusion.training.batching import (
    BatchConfigError,
    BatchPlan,
    plan_batches,
    resolve_batch_plan,
    scaled_lr,
)
from spectral_diffusion.training.setup import build_module
from tests.conftest import compose_config
from tests.train_subprocess import describe, load, run_train, tiny_overrides
from train import train


# -- global batch arithmetic ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "global_size,per_device_max,world,expected",
    [
        (256, 64, 4, (64, 1)),  # fits: no accumulation
        (256, 32, 4, (32, 2)),  # 64 per device in 2 micro-batches of 32
        (256, 48, 4, (32, 2)),  # 48 does not divide 64: the next split that fits
        (96, 40, 1, (32, 3)),
        (7, 2, 1, (1, 7)),  # a prime: only micro-batches of 1 fit
        (16, 100, 16, (1, 1)),
    ],
)
def test_plan_splits_the_global_batch(global_size, per_device_max, world, expected):
    plan = plan_batches(global_size, per_device_max, world)
    assert (plan.per_device, plan.accumulate) == expected
    assert plan.world_size * plan.per_device * plan.accumulate == global_size
    assert plan.per_device <= per_device_max


def test_plan_errors_name_the_keys():
    with pytest.raises(BatchConfigError, match=r"batch.global_size=250 does not split evenly over 4 devices.*e.g. 248"):
        plan_batches(250, 64, 4)
    with pytest.raises(BatchConfigError, match=r"batch.per_device_max=0 must be a positive integer"):
        plan_batches(64, 0, 1)
    with pytest.raises(BatchConfigError, match=r"trainer.accumulate_grad_batches=2 is set too"):
        resolve_batch_plan(64, 16, 16, 2, 1)
    assert resolve_batch_plan(None, None, 16, 2, 4) == BatchPlan(128, 4, 16, 2)  # as configured
    assert resolve_batch_plan(64, None, 16, 1, 2) == BatchPlan(64, 2, 16, 2)  # the limit is data.batch_size


def test_lr_scaling_is_explicit():
    assert scaled_lr(1e-3, "none", 1024, None) == 1e-3
    assert scaled_lr(1e-3, "linear", 1024, 256) == pytest.approx(4e-3)
    assert scaled_lr(1e-3, "sqrt", 1024, 256) == pytest.approx(2e-3)
    with pytest.raises(BatchConfigError, match=r"needs batch.reference_size"):
        scaled_lr(1e-3, "linear", 1024, None)
    with pytest.raises(BatchConfigError, match=r"batch.lr_scaling='cubic' must be one of none, linear, sqrt"):
        scaled_lr(1e-3, "cubic", 1024, 256)


def test_train_derives_batch_accumulation_and_lr_into_the_run_config(train_cfg):
    cfg = train_cfg(
        "batch.global_size=8",
        "batch.per_device_max=4",
        "batch.lr_scaling=linear",
        "batch.reference_size=4",
        "module.optimizer.lr=0.001",
        "trainer.max_steps=2",
    )
    train(cfg)
    out = Path(cfg.paths.output_dir)
    stored = load(out / "checkpoints" / "last.ckpt")["spectral_diffusion"]["config"]
    assert stored["data"]["batch_size"] == 4 and stored["trainer"]["accumulate_grad_batches"] == 2
    assert stored["module"]["optimizer"]["lr"] == pytest.approx(0.002)
    assert "accumulate_grad_batches: 2" in (out / "config.yaml").read_text()


# -- DDP on CPU ---------------------------------------------------------------------------------
# Plain SGD, one step, no clipping or warm-up: the weight change is -lr x the (averaged) gradient.
GRADIENT_SETTINGS = (
    "trainer.max_steps=1",
    "module.optimizer._target_=torch.optim.SGD",
    "~module.optimizer.betas",
    "module.optimizer.lr=0.5",
    "module.warmup_steps=0",
    "trainer.gradient_clip_val=null",
    "batch.global_size=8",
    "batch.per_device_max=4",
    "callbacks.sample_grid.num_samples=2",
)


def initial_weights(fmnist_root: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The weights train.py starts from (same seed, same construction order)."""
    cfg = compose_config("train", tmp_path / "init", tiny_overrides(fmnist_root, tmp_path / "init", *GRADIENT_SETTINGS))
    L.seed_everything(cfg.seed, workers=True)
    hydra.utils.instantiate(cfg.data)
    return {k: v.clone() for k, v in build_module(cfg).net.state_dict().items()}


@pytest.mark.slow
def test_two_gloo_processes_write_one_run_and_match_one_process_gradients(fmnist_root, tmp_path):
    """2 processes x 4 images equal 1 process accumulating 2 x 4 images: same data, noise and gradient."""
    ddp = run_train(
        tiny_overrides(
            fmnist_root,
            tmp_path / "ddp",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            *GRADIENT_SETTINGS,
        ),
        timeout=400,
    )
    assert ddp.returncode == 0, describe(ddp)
    single = run_train(tiny_overrides(fmnist_root, tmp_path / "single", *GRADIENT_SETTINGS))
    assert single.returncode == 0, describe(single)

    # One run directory, written by rank 0 alone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]
    run = tmp_path / "ddp"
    assert {"checkpoints", "samples", "config.yaml", "metrics.json", "train.log"} <= {p.name for p in run.iterdir()}
    assert not list(run.glob(".pl_hydra*")) and not list(run.glob("**/version_*"))
    log_text = (run / "train.log").read_text()
    console = ddp.stdout + ddp.stderr
    assert console.count("global batch 8 = 2 device(s) x 4 per device") == 2  # both ranks ran ...
    assert log_text.count("global batch 8 = 2 device(s) x 4 per device") == 1  # ... one wrote the log file

    ddp_ckpt, single_ckpt = (
        load(run / "checkpoints" / "last.ckpt"),
        load(tmp_path / "single" / "checkpoints" / "last.ckpt"),
    )
    assert ddp_ckpt["spectral_diffusion"]["config"]["trainer"]["accumulate_grad_batches"] == 1
    assert single_ckpt["spectral_diffusion"]["config"]["trainer"]["accumulate_grad_batches"] == 2
    start = initial_weights(fmnist_root, tmp_path / "scratch")
    total = 0.0
    for name, w0 in start.items():
        w_ddp, w_single = (
            ddp_ckpt["current_model_state"][f"net.{name}"],
            single_ckpt["current_model_state"][f"net.{name}"],
        )
        grad_ddp, grad_single = (w0 - w_ddp) / 0.5, (w0 - w_single) / 0.5
        torch.testing.assert_close(grad_ddp, grad_single, rtol=1e-4, atol=1e-6, msg=name)
        total += float(grad_single.abs().sum())
    assert total > 0 and math.isfinite(total)  # a real step was taken
