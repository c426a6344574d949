"""evaluate.py: cost of a preset, samples from a checkpoint, and the train -> evaluate round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from PIL import Image

from evaluate import evaluate
from spectral_diffusion.assembly import ConfigError
from spectral_diffusion.evaluation import count_gmacs, count_params
from spectral_diffusion.evaluation.fmnist_classifier import FMNISTClassifier
from spectral_diffusion.networks import UNet
from spectral_diffusion.utils.checkpoint import CheckpointMismatchError
from train import train

from .conftest import CHEAP_METRIC_OVERRIDES, compose_config


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
    metrics = evaluate(compose_config("evaluate", eval_dir, [f"ckpt_path={ckpt}", "grid_samples=4", "sampler.steps=3"]))
    assert metrics["weights"] == "ema" and metrics["global_step"] == 4
    assert metrics["input_shape"] == "1x32x32"
    assert Image.open(metrics["samples_png"]).size[0] > 32

    # The EMA and raw weights really differ, and use_ema picks between them.
    state = torch.load(ckpt, weights_only=True)
    assert any(not torch.equal(state["state_dict"][k], state["current_model_state"][k]) for k in state["state_dict"])
    raw = evaluate(
        compose_config("evaluate", tmp_path / "raw", [f"ckpt_path={ckpt}", "grid_samples=0", "use_ema=false"])
    )
    assert raw["weights"] == "raw"


def test_checkpoint_with_other_preset_names_the_keys(train_cfg, tmp_path):
    cfg = train_cfg()
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointMismatchError, match="(?s)do not fit the configured model.*shape mismatches"):
        evaluate(compose_config("evaluate", tmp_path / "e", [f"ckpt_path={ckpt}", "model=fmnist_small"]))


@pytest.fixture
def tiny_checkpoint(train_cfg) -> Path:
    cfg = train_cfg()
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


@pytest.fixture
def tiny_classifier(tmp_path) -> Path:
    """The Fashion-MNIST classifier's architecture, small and with random weights: a tiny extractor."""
    torch.manual_seed(0)
    path = tmp_path / "tiny_classifier.pt"
    torch.save(FMNISTClassifier(width=4, num_features=8).state_dict(), path)
    return path


def all_metrics(ckpt: Path, classifier: Path, fmnist_root: Path, cache: Path, *extra: str) -> list[str]:
    return [
        f"ckpt_path={ckpt}",
        "metrics=[fid,kid,macs,params,throughput,spectral]",
        "metrics.fid.feature_extractor=fmnist_classifier",
        f"metrics.fid.weights_path={classifier}",
        *CHEAP_METRIC_OVERRIDES,
        "num_samples=6",
        "batch_size=4",
        "grid_samples=4",
        "sampler.steps=2",
        "data=fashion_mnist",
        f"data.root={fmnist_root}",
        "data.download=false",
        "reference.split=val",
        f"reference.cache_dir={cache}",
        *extra,
    ]


def test_every_metric_of_a_tiny_checkpoint(tiny_checkpoint, tiny_classifier, fmnist_root, tmp_path, caplog):
    cache = tmp_path / "cache"
    overrides = all_metrics(tiny_checkpoint, tiny_classifier, fmnist_root, cache)
    metrics = evaluate(compose_config("evaluate", tmp_path / "e1", overrides))
    written = json.loads((tmp_path / "e1" / "run" / "metrics.json").read_text())
    expected = {
        "fd_fmnist", "kd_fmnist_mean", "kd_fmnist_std", "gmacs", "gmacs_per_sample", "gmacs_decoder",
        "params_m", "first_stage_params_m", "samples_per_s", "weights", "protocol", "samples_png",
        "spectral_report_json", "spectral_report_png",
    }  # fmt: skip
    assert expected <= written.keys() and "fid" not in written  # the offline classifier is never called FID
    assert written["weights"] == "ema" and written["fd_fmnist"] > 0 and written["samples_per_s"] > 0
    assert written["gmacs_per_sample"] == pytest.approx(2 * written["gmacs"])  # 2 sampler steps
    assert written["gmacs_decoder"] == 0.0  # pixel space
    protocol = written["protocol"]
    assert protocol["num_samples"] == 6 and protocol["sampler"] == "DDIMSampler" and protocol["steps"] == 2
    assert protocol["metric_key"] == "fd_fmnist" and protocol["reference"]["num_images"] == 32
    assert protocol["reference"]["split"] == "val" and protocol["versions"]["torch"] == torch.__version__
    assert protocol["weights"] == "ema" and protocol["seed"] == 0
    assert protocol["quantize"] == "round" and protocol["noise"] == "counter" and "CounterNoise" in protocol["seeding"]
    assert "not comparable with published numbers" in caplog.text
    report = json.loads(Path(written["spectral_report_json"]).read_text())
    assert report["timesteps"] == [900, 10] and len(report["models"]["student"]["fft_relative_error"][0]) == 4
    assert Image.open(written["spectral_report_png"]).size[0] > 800
    assert metrics["fd_fmnist"] == written["fd_fmnist"]

    # The reference statistics are reused, and the result does not depend on the batch size.
    stats_files = sorted(cache.glob("*.npz"))
    stamp = stats_files[0].stat().st_mtime_ns
    fid_only = [o for o in overrides if not o.startswith(("metrics.kid", "metrics.throughput", "metrics.spectral"))]
    again = evaluate(
        compose_config("evaluate", tmp_path / "e2", [*fid_only, "batch_size=6", "metrics=[fid]", "grid_samples=0"])
    )
    assert sorted(cache.glob("*.npz")) == stats_files and stats_files[0].stat().st_mtime_ns == stamp
    assert again["fd_fmnist"] == pytest.approx(metrics["fd_fmnist"], rel=1e-4)


def test_truncation_quantizes_generated_images_as_ldm_does(tiny_checkpoint, tiny_classifier, fmnist_root, tmp_path):
    """quantize=truncate changes only how generated images become uint8; the record says which."""
    base = [
        o for o in all_metrics(tiny_checkpoint, tiny_classifier, fmnist_root, tmp_path / "cache")
        if not o.startswith(("metrics.kid", "metrics.throughput", "metrics.spectral", "metrics="))
    ] + ["metrics=[fid]", "grid_samples=0"]  # fmt: skip
    rounded = evaluate(compose_config("evaluate", tmp_path / "r", base))
    truncated = evaluate(compose_config("evaluate", tmp_path / "t", [*base, "quantize=truncate"]))
    record = json.loads((tmp_path / "t" / "run" / "metrics.json").read_text())["protocol"]
    assert record["quantize"] == "truncate"
    assert truncated["fd_fmnist"] != pytest.approx(rounded["fd_fmnist"], rel=1e-6)
    with pytest.raises(ConfigError, match="quantize='floor' must be one of round, truncate"):
        evaluate(compose_config("evaluate", tmp_path / "bad", [*base, "quantize=floor"]))


def test_teacher_adds_its_numbers_and_the_ratios(tiny_checkpoint, tiny_classifier, fmnist_root, tmp_path):
    overrides = [
        o
        for o in all_metrics(tiny_checkpoint, tiny_classifier, fmnist_root, tmp_path / "cache")
        if not o.startswith(("metrics.kid", "metrics.throughput", "metrics="))
    ] + ["metrics=[fid,macs,params,spectral]", "teacher=checkpoint", f"teacher.ckpt_path={tiny_checkpoint}"]
    metrics = evaluate(compose_config("evaluate", tmp_path / "e", overrides))
    # The teacher is the same network here: every ratio is 1 and the spectral gap is 0.
    assert metrics["teacher"]["gmacs"] == pytest.approx(metrics["gmacs"])
    assert metrics["student_over_teacher"]["gmacs"] == pytest.approx(1.0)
    assert metrics["student_over_teacher"]["fd_fmnist"] == pytest.approx(1.0, rel=1e-4)
    report = json.loads(Path(metrics["spectral_report_json"]).read_text())
    assert max(max(row) for row in report["student_vs_teacher"]["fft_relative_error"]) < 1e-8


def test_reference_mode_computes_once_then_reuses(tiny_classifier, fmnist_root, tmp_path):
    overrides = [
        "mode=reference",
        "data=fashion_mnist",
        f"data.root={fmnist_root}",
        "data.download=false",
        "metrics=[fid]",
        "metrics.fid.feature_extractor=fmnist_classifier",
        f"metrics.fid.weights_path={tiny_classifier}",
        f"reference.cache_dir={tmp_path / 'cache'}",
    ]
    first = evaluate(compose_config("evaluate", tmp_path / "r1", overrides))
    second = evaluate(compose_config("evaluate", tmp_path / "r2", overrides))
    assert first["computed"] and not second["computed"] and first["num_images"] == 64  # the train split
    assert first["reference_stats"] == second["reference_stats"]


def test_sampling_metrics_without_a_checkpoint_are_refused(tmp_path):
    with pytest.raises(ValueError, match="need a checkpoint to sample from: give ckpt_path=PATH"):
        evaluate(compose_config("evaluate", tmp_path, ["model=fmnist_small", "metrics=[throughput]"]))


def test_guidance_sweep_mode_measures_every_cutoff(train_cfg, tiny_classifier, fmnist_root, tmp_path):
    cfg = train_cfg("model.num_classes=10", "module.label_dropout=0.5")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    overrides = [
        o
        for o in all_metrics(ckpt, tiny_classifier, fmnist_root, tmp_path / "cache", "mode=guidance_sweep")
        if not o.startswith(("metrics.kid", "metrics.throughput", "metrics.spectral", "metrics="))
    ]
    overrides += ["metrics=[fid]", "sweep.cutoffs=[0.0,0.5,1.0]", "guidance.scale=3", "sampler.steps=4"]
    result = evaluate(compose_config("evaluate", tmp_path / "sweep", overrides))
    rows = result["rows"]
    assert [r["truncate_after"] for r in rows] == [0.0, 0.5, 1.0]
    # 4 steps: no guided step, 2 guided steps (2 calls each), 4 guided steps.
    assert [r["network_evaluations"] for r in rows] == [4, 6, 8]
    assert all(r["num_samples"] == 6 and r["fd"] >= 0 and 0 <= r["class_accuracy"] <= 1 for r in rows)
    run_dir = tmp_path / "sweep" / "run"
    assert (run_dir / "guidance_sweep.md").is_file() and (run_dir / "guidance_sweep.png").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["rows"] == json.loads(json.dumps(rows))

    # An unconditional checkpoint cannot be guided: the error says what would work.
    plain = train_cfg(f"paths.output_dir={tmp_path / 'plain'}")
    train(plain)
    overrides[0] = f"ckpt_path={Path(plain.paths.output_dir) / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(ConfigError, match="needs a class-conditional model"):
        evaluate(compose_config("evaluate", tmp_path / "sweep2", overrides))
