"""scripts/reproduce.py is an orchestrator: no metric code, and its tables are evaluate.py's numbers."""

from __future__ import annotations

import ast
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from spectral_diffusion.evaluation.fmnist_classifier import FMNISTClassifier

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce.py"


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_reproduce_has_no_metric_code():
    """It imports neither the framework nor torch: every number comes from train.py or evaluate.py files."""
    tree = ast.parse(SCRIPT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "argparse", "json", "shlex", "subprocess", "sys", "time", "dataclasses",
                        "pathlib", "typing", "matplotlib", "statistics", "shutil"}, imported  # fmt: skip
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }
    assert not names & {"frechet_distance", "FeatureStatistics", "sample", "extract", "count_gmacs"}


def fake_evaluation(out: Path, fd: float, gmacs: float, command: str) -> None:
    out.mkdir(parents=True)
    protocol = {"feature_extractor": "fmnist_classifier-abc", "quantize": "round", "resize": None, "num_samples": 16,
                "seed": 0, "noise": "counter", "sampler": "DDIMSampler", "steps": 2, "eta": 1.0, "weights": "ema",
                "reference": {"split": "train", "num_images": 64}}  # fmt: skip
    record = {"fd_fmnist": fd, "gmacs": gmacs, "params_m": gmacs * 5, "samples_per_s": 10 / gmacs, "protocol": protocol}
    (out / "metrics.json").write_text(json.dumps(record))
    (out / "reproduce_command.txt").write_text(command)


def test_report_reads_evaluate_metrics_and_prints_each_rows_command(tmp_path, monkeypatch):
    reproduce = load_reproduce()
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    runs = reproduce.study_runs(False)
    for i, run in enumerate(runs):
        command = reproduce.shown(reproduce.evaluate_command("repro", "cpu", run))
        gmacs = 0.249 if run.family == "teacher" else 0.249 / float(run.width.rstrip("x"))
        fd = 10.0 + i
        fake_evaluation(tmp_path / "logs" / "evaluate" / f"repro_cpu_{run.name}", fd, gmacs, command)
        train_out = tmp_path / "logs" / "train" / f"repro_cpu_{run.name}"
        train_out.mkdir(parents=True)
        (train_out / "metrics.json").write_text(json.dumps({"fit_seconds": 100.0 * gmacs, "resumed": False}))
    sd_8x = next(r for r in runs if r.name == "sd_8x")
    for seed, fd in ((1, 15.0), (2, 16.0)):  # --stage noise: the seed-0 FD is 14
        command = reproduce.shown(reproduce.evaluate_command("repro", "cpu", sd_8x, seed))
        assert f"seed={seed}" in command and f"run_name=repro_cpu_sd_8x_seed{seed}" in command
        fake_evaluation(tmp_path / "logs" / "evaluate" / f"repro_cpu_sd_8x_seed{seed}", fd, 0.249 / 8, command)
    trials = tmp_path / "logs" / "train" / "optuna" / "repro_cpu_sd_8x"  # as scripts/pareto.py tables a sweep
    trials.mkdir(parents=True)
    (trials / "pareto.md").write_text(
        "| run | gmacs | params_m | val/ddpm | pareto | path |\n|---|---|---|---|---|---|\n"
        "| loss.alpha=-1 | 0.0291 | 0.161 | 0.25 |  | a/metrics.json |\n"
        "| loss.alpha=-0.5 | 0.0291 | 0.161 | 0.2 | yes | b/metrics.json |\n"
    )
    assert reproduce.main(["--budget", "cpu", "--stage", "report"]) == 0
    text = (tmp_path / "docs" / "results.md").read_text()
    best_first = "| loss.alpha=-0.5 | 0.0291 | 0.161 | 0.2 |\n| loss.alpha=-1 | 0.0291 | 0.161 | 0.25 |"
    assert "The 2 best of 2 trials" in text and best_first in text
    assert "| 8x | 0.0311 | 13.00 | 0.0311 | 14.00 | 1.08 | 1.40x |" in text  # the width table
    assert "FD 14.00, 15.00, 16.00 at seeds 0, 1, 2; standard deviation 1.00, range 2.00 (14.3%" in text
    assert "| Teacher | 1.245 | 0.2490 | 1.0x | 10.00 | 1.00x |" in text
    assert "| SD 8x (WG + spectrum-aware distillation) |" in text and "| 8.0x | 14.00 | 1.40x |" in text
    for run in runs:
        assert reproduce.shown(reproduce.evaluate_command("repro", "cpu", run)) in text
    assert "quantize `round`" in text and "reference `train` split, 64 images" in text
    result = json.loads((tmp_path / "docs" / "results_cpu.json").read_text())
    assert [r["fd_fmnist"] for r in result["rows"]] == [10.0 + i for i in range(len(runs))]
    assert Image.open(tmp_path / "docs" / "results_cpu.png").size[0] > 1000


def test_commands_are_printed_and_unknown_runs_named(capsys):
    reproduce = load_reproduce()
    assert reproduce.main(["--budget", "cpu", "--print-commands", "--runs", "teacher", "sd_8x"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("python ") for line in lines)
    assert "teacher.ckpt_path=" in lines[2] and "evaluate.py" in lines[3]
    with pytest.raises(SystemExit):
        reproduce.main(["--runs", "sd_99x"])


@pytest.mark.slow
def test_smoke_budget_runs_train_and_evaluate_end_to_end(tmp_path, monkeypatch, fmnist_root):
    """Teacher, Lite 8x and SD 8x for 2 steps each, each evaluated by evaluate.py, then the report."""
    reproduce = load_reproduce()
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    classifier = tmp_path / "classifier.pt"
    torch.manual_seed(0)
    torch.save(FMNISTClassifier(width=4, num_features=8).state_dict(), classifier)
    data = [f"data.root={fmnist_root}", "data.download=false", "data.num_workers=0"]
    monkeypatch.setattr(
        reproduce,
        "train_command",
        lambda *a, _orig=reproduce.train_command: [*_orig(*a), *data, "trainer.limit_val_batches=1"],
    )
    args = ["--budget", "smoke", "--runs", "teacher", "lite_8x", "sd_8x",
            "--eval-overrides", f"metrics.fid.weights_path={classifier}", f"reference.cache_dir={tmp_path / 'ref'}"]  # fmt: skip
    assert reproduce.main(args) == 0
    result = json.loads((tmp_path / "docs" / "results_smoke.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["teacher", "lite_8x", "sd_8x"]
    for row in result["rows"]:
        metrics = json.loads(
            (tmp_path / "logs" / "evaluate" / f"repro_smoke_{row['name']}" / "metrics.json").read_text()
        )
        assert row["fd_fmnist"] == metrics["fd_fmnist"] and row["protocol"] == metrics["protocol"]
        assert shlex.split(row["command"])[1] == "evaluate.py"
    teacher, lite, sd = result["rows"]
    assert lite["gmacs"] < teacher["gmacs"] / 6 and sd["gmacs"] < teacher["gmacs"] / 6
