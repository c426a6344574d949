"""evaluate.py: cost of a preset, samples from a checkpoint, and the train -> evaluate round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from PIL import Image

from evaluate import evaluate
from spectral_diffusion.evaluation import count_gmacs, count_params
from spectral_diffusion.networks import UNet
from spectral_diffusion.utils.checkpoint import CheckpointMismatchError
from train import train

from .conftest import compose_config


def test_preset_cost_without_checkpoint(tmp_path):
    metrics = evaluate(compose_config("evaluate", tmp_path, ["model=fmnist_small"]))
    net = UNet(32, 1, 32, (1, 2, 2), 1, (8,))
    assert metrics["params_m"] == pytest.approx(count_params(net) / 1e6)
    assert metrics["gmacs"] == pytest.approx(count_gmacs(net, (1, 32, 32)))
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["params_m"] == metrics["params_m"] and written["input_shape"] == "1x32x32"


def test_unknown_preset_lists_the_known_ones(tmp_path):
    with pytest.raises(MissingConfigException, match="fmnist_small"):
        compose_config("evaluate", tmp_path, ["model=no_such_preset"])


def test_nothing_to_evaluate_is_explained(tmp_path):
    with pytest.raises(ValueError, match="ckpt_path=PATH, or model=PRESET"):
        evaluate(compose_config("evaluate", tmp_path))


def test_train_then_evaluate_round_trip(train_cfg, tmp_path):
    cfg = train_cfg()
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    eval_dir = tmp_path / "eval"
    metrics = evaluate(compose_config("evaluate", eval_dir, [f"ckpt_path={ckpt}", "num_samples=4", "sampler.steps=3"]))
    assert metrics["weights"] == "ema" and metrics["global_step"] == 4
    assert metrics["input_shape"] == "1x32x32"
    assert Image.open(metrics["samples_png"]).size[0] > 32

    # The EMA and raw weights really differ, and use_ema picks between them.
    state = torch.load(ckpt, weights_only=True)
    assert any(not torch.equal(state["state_dict"][k], state["current_model_state"][k]) for k in state["state_dict"])
    raw = evaluate(
        compose_config("evaluate", tmp_path / "raw", [f"ckpt_path={ckpt}", "num_samples=0", "use_ema=false"])
    )
    assert raw["weights"] == "raw"


def test_checkpoint_with_other_preset_names_the_keys(train_cfg, tmp_path):
    cfg = train_cfg()
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointMismatchError, match="(?s)do not fit the configured model.*shape mismatches"):
        evaluate(compose_config("evaluate", tmp_path / "e", [f"ckpt_path={ckpt}", "model=fmnist_small"]))
