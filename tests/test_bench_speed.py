"""scripts/bench_speed.py on a tiny teacher/student pair: every measurement, efficiency and breakdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_speed  # noqa: E402


@pytest.fixture
def tiny_pair(monkeypatch):
    monkeypatch.setitem(bench_speed.PAIRS, "tiny", ("fmnist_small", "ddpm_linear"))
    monkeypatch.setattr(bench_speed, "student_preset", lambda pair, size: "fmnist_sd")


def test_one_interleaved_run_measures_every_job(tiny_pair, tmp_path):
    out = tmp_path / "speed.json"
    args = [
        "--device", "cpu", "--pairs", "tiny", "--students", "8x", "--batch-size", "2",
        "--sample-batches", "1", "2", "--sample-steps", "2", "--guidance-pairs", "tiny",
        "--repeats", "2", "--warmup", "0", "--json", str(out), "--markdown", str(tmp_path / "speed.md"),
        "--variants", "fmnist_sd:head_channels=16",
    ]  # fmt: skip
    assert bench_speed.main(args) == 0
    summary = json.loads(out.read_text())
    results = {(r["preset"], r["kind"]): r for r in summary["results"]}
    student, variant = "fmnist_sd", "fmnist_sd model.head_channels=16"
    expected_kinds = {
        "train", "sample/ddim/b1", "sample/ddim/b2", "sample/dpmpp_2m/b1", "sample/dpmpp_2m/b2",
        "sample/ddim/b2/cfg", "sample/ddim/b2/cfg_half", "sampling_loop/ddim/b2",
    }  # fmt: skip
    assert {k for p, k in results if p == "fmnist_small"} == expected_kinds | {"teacher_forward"}
    assert {k for p, k in results if p == student} == expected_kinds | {"distill"}
    assert {k for p, k in results if p == variant} == expected_kinds | {"distill"}
    for r in summary["results"]:
        assert len(r["seconds_all"]) == 2 and r["seconds"] > 0
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / r["seconds"])
    # efficiency = (student images/s / teacher images/s) / (teacher GMACs / student GMACs)
    teacher, sd = results[("fmnist_small", "train")], results[(student, "train")]
    assert sd["gmacs"] < teacher["gmacs"]
    eff = next(e for e in summary["efficiency"] if e["student"] == student and e["kind"] == "train")
    assert eff["efficiency"] == pytest.approx(
        (sd["images_per_s"] / teacher["images_per_s"]) / (teacher["gmacs"] / sd["gmacs"])
    )
    breakdowns = {b["preset"]: b for b in summary["breakdown"]}
    for b in breakdowns.values():
        assert sum(b["share"].values()) == pytest.approx(1.0)
        assert b["share"]["convolution"] > 0 and b["share"]["optimizer"] > 0
    assert breakdowns[student]["share"]["wavelet_gating"] > 0  # the SD student's gates are found
    assert breakdowns["fmnist_small"]["share"]["wavelet_gating"] == 0  # the teacher has none
    kinds = {t["target"].split(" ")[0] for t in summary["targets"]}
    assert {"training", "sampling", "distillation"} <= kinds
    table = (tmp_path / "speed.md").read_text()
    assert "| fmnist_sd / fmnist_small | train |" in table and "| fmnist_sd / fmnist_small | distill |" not in table
    # The tables are rebuilt from the JSON alone, exactly
    assert bench_speed.main(["--from-json", str(out), "--markdown", str(tmp_path / "again.md")]) == 0
    assert (tmp_path / "again.md").read_text() == table


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("aten::convolution_backward", "convolution"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::native_group_norm", "norm"),
        ("aten::silu", "elementwise"),
        ("aten::copy_", "copy"),
        ("aten::bmm", "matmul"),
        ("aten::lerp_", "optimizer"),
    ],
)
def test_op_kinds(name, kind):
    assert bench_speed.op_kind(name) == kind
