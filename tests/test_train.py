"""End-to-end train.py runs on tiny data: outputs, resume, and refusals with clear errors."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from spectral_diffusion.utils.checkpoint import CheckpointMismatchError
from train import train


def run_dir(cfg) -> Path:
    return Path(cfg.paths.output_dir)


def test_few_step_run_writes_checkpoint_samples_and_record(train_cfg):
    cfg = train_cfg()
    metric = train(cfg)
    out = run_dir(cfg)
    assert isinstance(metric, float) and metric == metric  # val/loss, for sweeps
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert (out / "checkpoints" / "step_0000002.ckpt").is_file()
    # EMA weights in state_dict, raw weights alongside (Lightning's WeightAveraging layout).
    assert set(ckpt["state_dict"]) == set(ckpt["current_model_state"])
    assert ckpt["spectral_diffusion"]["config"]["model"]["base_channels"] == 8
    for name in ("step_0000002.png", "step_0000004.png", "final.png"):
        image = Image.open(out / "samples" / name)
        assert image.size[0] > 32  # a grid of 4 upscaled 32x32 samples
    assert "model:" in (out / "config.yaml").read_text()
    assert set(json.loads((out / "git.json").read_text())) == {"commit", "dirty"}
    assert (out / "csv" / "metrics.csv").read_text().startswith(("epoch", "lr", "step", "train", "val"))


def test_training_reduces_the_loss(train_cfg):
    """A few dozen steps on the tiny bar data set must beat the untrained network's loss (~1).

    val/loss is measured with the EMA weights, so the EMA must be short enough to follow 40 steps.
    """
    cfg = train_cfg(
        "trainer.max_steps=40",
        "trainer.val_check_interval=40",
        "module.warmup_steps=0",
        "callbacks.sample_grid.every_n_steps=0",
        "callbacks.model_checkpoint.every_n_train_steps=40",
        "trainer.limit_val_batches=4",
        "data.batch_size=16",
        "callbacks.ema.decay=0.8",
    )
    assert train(cfg) < 0.6


def test_rerunning_the_same_command_resumes(train_cfg):
    cfg = train_cfg()
    train(cfg)
    before = torch.load(run_dir(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    cfg = train_cfg("trainer.max_steps=6", "resume=true")  # a longer run: a changed setting, allowed explicitly
    train(cfg)
    after = torch.load(run_dir(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == 6
    assert (run_dir(cfg) / "checkpoints" / "step_0000006.ckpt").is_file()
    # The optimizer continued: Adam's step count went on from 4 to 6 rather than restarting.
    steps = {int(s["step"]) for s in after["optimizer_states"][0]["state"].values()}
    assert steps == {6}
    assert before["global_step"] == 4


def test_last_ckpt_is_the_final_step_even_with_other_checkpoint_settings(train_cfg):
    train(train_cfg())  # 4 steps, a checkpoint every 2
    # Resume with another checkpoint interval and a max_steps that is not a multiple of it.
    cfg = train_cfg("trainer.max_steps=7", "callbacks.model_checkpoint.every_n_train_steps=3", "resume=true")
    train(cfg)
    checkpoints = run_dir(cfg) / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 7
    assert not list(checkpoints.glob("last-v*.ckpt"))  # overwritten, not versioned beside a stale one


def test_resume_with_another_architecture_names_the_keys(train_cfg):
    train(train_cfg())
    with pytest.raises(CheckpointMismatchError, match="shape mismatches.*conv_in.weight") as err:
        train(train_cfg("model.base_channels=16", "trainer.max_steps=6", "resume=true"))
    assert "'base_channels': 8" in str(err.value)


def test_resume_false_refuses_to_overwrite(train_cfg):
    train(train_cfg())
    with pytest.raises(FileExistsError, match="resume=false"):
        train(train_cfg("resume=false"))


def test_explicit_ckpt_path_must_exist(train_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        train(train_cfg(f"ckpt_path={tmp_path}/missing.ckpt"))


def test_data_model_shape_mismatch_is_named(train_cfg):
    from spectral_diffusion.assembly import ConfigError

    with pytest.raises(ConfigError, match=r"model.in_channels=3"):
        train(train_cfg("model.in_channels=3"))


def test_missing_data_root_is_named(train_cfg, tmp_path):
    from spectral_diffusion.data import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="does not hold the Fashion-MNIST IDX files"):
        train(train_cfg(f"data.root={tmp_path}/empty"))


def test_dry_run_prints_config_and_trains_nothing(train_cfg, capsys):
    cfg = train_cfg("dry_run=true")
    assert train(cfg) is None
    assert "_target_: spectral_diffusion.networks.UNet" in capsys.readouterr().out
    assert not (run_dir(cfg) / "checkpoints").exists()


def test_output_dir_override_moves_the_run(train_cfg, tmp_path):
    cfg = train_cfg(f"paths.output_dir={tmp_path}/elsewhere")
    train(cfg)
    assert (tmp_path / "elsewhere" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "elsewhere" / "samples" / "final.png").is_file()
    assert (tmp_path / "elsewhere" / "config.yaml").is_file()


def test_non_finite_loss_stops_with_a_message_naming_the_step(train_cfg):
    from spectral_diffusion.training.setup import build_module

    module = build_module(train_cfg())
    module.loss = lambda *args: torch.tensor(float("nan"))
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 0.*module.optimizer.lr"):
        module.training_step((torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long)), 0)


def test_metrics_json_records_the_metric_cost_and_step(train_cfg):
    cfg = train_cfg()
    metric = train(cfg)
    record = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert record["val/loss"] == pytest.approx(metric)
    assert record["metrics"]["val/loss"] == pytest.approx(metric)
    assert record["global_step"] == 4 and record["run_dir"] == str(run_dir(cfg))
    assert record["params_m"] == pytest.approx(0.0451, abs=1e-3)  # the tiny debug UNet
    assert 0 < record["gmacs"] < 0.1
    assert "base_channels: 8" in (run_dir(cfg) / "csv" / "hparams.yaml").read_text()  # the config, logged


def test_non_finite_skip_mode_drops_the_step_and_goes_on(train_cfg):
    """With module.non_finite_loss=skip a NaN loss leaves the weights and Adam's state untouched."""
    from spectral_diffusion.training import module as module_lib

    cfg = train_cfg("module.non_finite_loss=skip", "trainer.max_steps=3", "callbacks.ema=null")
    original = module_lib.DiffusionModule._compute_loss

    def nan_at_step_1(self, batch, generator):
        terms = original(self, batch, generator)
        if self.global_step == 1:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    module_lib.DiffusionModule._compute_loss = nan_at_step_1
    try:
        train(cfg)
    finally:
        module_lib.DiffusionModule._compute_loss = original
    ckpt = torch.load(run_dir(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()} == {2}  # 3 steps, 1 skipped


def test_non_finite_policy_is_checked(train_cfg):
    from hydra.errors import InstantiationException

    from spectral_diffusion.training.setup import build_module

    with pytest.raises(InstantiationException, match=r"module.non_finite_loss='ignore' must be one of stop, skip"):
        build_module(train_cfg("module.non_finite_loss=ignore"))


def test_out_of_memory_names_the_per_device_batch(train_cfg):
    from spectral_diffusion.training import module as module_lib
    from spectral_diffusion.training.performance import TrainingOutOfMemoryError

    original = module_lib.DiffusionModule._compute_loss

    def out_of_memory(self, batch, generator):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    module_lib.DiffusionModule._compute_loss = out_of_memory
    before = signal.getsignal(signal.SIGUSR1)
    try:
        with pytest.raises(TrainingOutOfMemoryError, match=r"per-device batch of 4 images.*batch.per_device_max=2"):
            train(train_cfg())
    finally:
        module_lib.DiffusionModule._compute_loss = original
    assert signal.getsignal(signal.SIGUSR1) == before  # the crash did not leave the preemption handler behind


def test_periodic_checkpoints_rotate(train_cfg):
    cfg = train_cfg(
        "trainer.max_steps=8", "callbacks.model_checkpoint.save_top_k=2", "callbacks.sample_grid.every_n_steps=0"
    )
    train(cfg)
    names = sorted(p.name for p in (run_dir(cfg) / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_0000006.ckpt", "step_0000008.ckpt"]


def test_resuming_with_changed_settings_is_refused_naming_the_keys(train_cfg):
    from spectral_diffusion.utils.run import ResumeConfigError

    train(train_cfg())
    with pytest.raises(ResumeConfigError) as err:
        train(train_cfg("trainer.max_steps=6", "module.optimizer.lr=0.002"))
    message = str(err.value)
    assert "trainer.max_steps: 4 -> 6" in message and "module.optimizer.lr: 0.001 -> 0.002" in message
    assert "resume=true" in message and "run_name=" in message
    # Where it writes, how it logs and shows progress, and the grids may change: it resumes.
    train(train_cfg("logger=tensorboard", "callbacks.sample_grid.num_samples=2", "data.num_workers=0"))
    # The EMA is part of the result, although it is a callback.
    with pytest.raises(ResumeConfigError, match=r"callbacks.ema.decay: 0.995 -> 0.9"):
        train(train_cfg("callbacks.ema.decay=0.9"))


def test_metrics_csv_keeps_the_steps_before_a_resume(train_cfg):
    import csv

    train(train_cfg())  # steps 0-3, a checkpoint at 2 and 4
    path = run_dir(train_cfg()) / "csv" / "metrics.csv"
    first = [row for row in csv.DictReader(path.open()) if row.get("train/loss")]
    train(train_cfg("trainer.max_steps=6", "resume=true"))
    rows = [row for row in csv.DictReader(path.open()) if row.get("train/loss")]
    steps = [int(row["step"]) for row in rows]
    assert steps == list(range(6))  # Lightning's CSVLogger would have kept only steps 4 and 5
    assert rows[:4] == first  # the first run's rows, untouched
