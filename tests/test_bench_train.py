"""scripts/bench_train.py: the timed window, the figures it derives, and the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra
import pytest
from hydra.core.hydra_config import HydraConfig

from spectral_diffusion.evaluation.cost import count_gmacs, count_params
from tests.conftest import compose_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_train  # noqa: E402


@pytest.fixture(autouse=True)
def forget_hydra_config():
    yield
    HydraConfig.instance().cfg = None


def test_measure_times_the_steps_after_warmup_of_the_real_module(tmp_path):
    setting = bench_train.Setting(
        preset="fmnist_tiny_sd",
        role="student",
        pair="fmnist",
        diffusion="ddpm_linear",
        device="cpu",
        precision="32",
        compile=False,
        channels_last=True,
        batch_size=2,
        steps=2,
        warmup=1,
    )
    result = bench_train.measure(setting)
    assert result["global_step"] == 3  # warm-up + timed optimizer steps, all of them run
    assert result["images_per_s"] == pytest.approx(2 * 2 / result["seconds"])
    assert result["ms_per_step"] == pytest.approx(1000 * result["seconds"] / 2)
    assert result["shape"] == "1x32x32" and result["memory_kind"] == "peak RSS" and result["peak_memory_mib"] > 100
    net = hydra.utils.instantiate(compose_config("train", tmp_path, ["model=fmnist_tiny_sd"]).model)
    assert result["gmacs"] == pytest.approx(count_gmacs(net, (1, 32, 32)))
    assert result["params_m"] == pytest.approx(count_params(net) / 1e6)


class FakeTrainer:
    global_step = 0


def test_the_timer_reads_the_clock_at_the_window_edges(monkeypatch):
    clock = iter(range(100, 200))
    monkeypatch.setattr(bench_train.time, "perf_counter", lambda: float(next(clock)))
    timer = bench_train.step_timer(warmup=2, steps=3, device="cpu")
    trainer = FakeTrainer()
    readings = []
    for step in range(6):  # Lightning: batch start at global_step == step, batch end after the step
        trainer.global_step = step
        timer.on_train_batch_start(trainer)
        trainer.global_step = step + 1
        timer.on_train_batch_end(trainer)
        readings.append((timer.start, timer.end))
    assert readings[1] == (None, None)  # still warming up
    assert readings[2] == (100.0, None)  # the clock starts before step 3 (global_step 2)
    assert readings[4] == (100.0, 101.0)  # and stops after step 5 (global_step 5)
    assert readings[5] == (100.0, 101.0)


def result(preset, role, pair, images_per_s, gmacs, device_name="AMD EPYC", compile=False):
    return {
        "preset": preset,
        "role": role,
        "pair": pair,
        "precision": "bf16-mixed",
        "compile": compile,
        "channels_last": True,
        "batch_size": 64,
        "images_per_s": images_per_s,
        "gmacs": gmacs,
        "device_name": device_name,
        "shape": "3x64x64",
        "params_m": 1.0,
        "ms_per_step": 1.0,
        "peak_memory_mib": 1.0,
        "memory_kind": "max_memory_allocated",
    }


def test_speedups_pair_students_with_their_teacher_under_the_same_switches():
    results = [
        result("ldm_celebahq", "teacher", "celebahq", 100.0, 101.2),
        result("sd_celebahq_8x", "student", "celebahq", 950.0, 12.44),
        result("sd_celebahq_18x", "student", "celebahq", 1500.0, 5.06),
        result("ldm_celebahq", "teacher", "celebahq", 200.0, 101.2, compile=True),
        result("sd_celebahq_8x", "student", "celebahq", 2400.0, 12.44, compile=True),
    ]
    ratios = {(s["student"], s["compile"]): s for s in bench_train.speedups(results)}
    assert ratios[("sd_celebahq_8x", False)]["speedup"] == pytest.approx(9.5)
    assert not ratios[("sd_celebahq_8x", False)]["meets_10x"]
    assert ratios[("sd_celebahq_18x", False)]["meets_10x"]
    assert ratios[("sd_celebahq_8x", True)]["speedup"] == pytest.approx(12.0)
    assert ratios[("sd_celebahq_8x", False)]["gmacs_ratio"] == pytest.approx(101.2 / 12.44)
    assert bench_train.h100_check(results) == []  # not an H100
    table = bench_train.markdown(results)
    assert table.count("| sd_celebahq_8x |") == 2 and "| 9.5x | no |" in table and "| 12.0x | yes |" in table


def test_the_h100_target_is_checked_on_h100s_only():
    results = [
        result("sd_celebahq_8x", "student", "celebahq", 2100.0, 12.44, device_name="NVIDIA H100 80GB HBM3"),
        result(
            "sd_celebahq_8x", "student", "celebahq", 1900.0, 12.44, device_name="NVIDIA H100 80GB HBM3", compile=True
        ),
        result("sd_celebahq_8x", "student", "celebahq", 5000.0, 12.44, device_name="NVIDIA H200"),
    ]
    lines = bench_train.h100_check(results)
    assert len(lines) == 2 and "meets" in lines[0] and "misses" in lines[1]


def test_settings_cover_every_pair_student_and_switch():
    args = argparse.Namespace(
        pairs=["celebahq", "church"],
        students=["8x", "18x"],
        precision="both",
        compile="both",
        device="cuda",
        channels_last="on",
        batch_size=64,
        steps=20,
        warmup=10,
        tf32="on",
        ema="on",
        threads=None,
        roles=["teacher", "student"],
    )
    settings = bench_train.settings_for(args)
    assert len(settings) == 2 * 2 * 2 * 3
    args.roles = ["student"]
    assert {s.role for s in bench_train.settings_for(args)} == {"student"}
    assert len(bench_train.settings_for(args)) == 2 * 2 * 2 * 2
    presets = {s.preset for s in settings}
    assert presets == {
        "ldm_celebahq",
        "sd_celebahq_8x",
        "sd_celebahq_18x",
        "ldm_church",
        "sd_church_8x",
        "sd_church_18x",
    }
    assert {s.diffusion for s in settings if s.pair == "church"} == {"ldm_church"}
    for preset in presets:  # every preset named here exists
        assert (Path(bench_train.CONFIG_DIR) / "model" / f"{preset}.yaml").is_file()
