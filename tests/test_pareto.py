"""scripts/pareto.py through its command line: sweep directories in, the Pareto table and plot out."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pareto.py"


def write_run(directory: Path, overrides: list[str], record: dict) -> None:
    """A run directory as train.py leaves it: metrics.json and Hydra's overrides.yaml."""
    (directory / ".hydra").mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(record))
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Three runs of a grid over base_channels: 8 (cheapest), 16 (dominated by 24), 24 (best)."""
    root = tmp_path / "logs" / "train" / "multirun" / "grid"
    for job, (channels, gmacs, loss) in enumerate([(8, 0.1, 0.30), (16, 0.4, 0.25), (24, 0.3, 0.20)]):
        record = {"gmacs": gmacs, "params_m": channels / 10, "metrics": {"val/loss": loss}, "global_step": 2}
        write_run(root / str(job), ["experiment=fmnist_sd", f"model.base_channels={channels}"], record)
    return root


def run_pareto(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *overrides], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_pareto_marks_the_front_and_labels_runs_by_their_overrides(sweep, tmp_path):
    done = run_pareto(tmp_path, f"dirs={sweep}", "metric=val/loss")
    assert done.returncode == 0, done.stderr
    with (sweep / "pareto.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["model.base_channels=8", "model.base_channels=24", "model.base_channels=16"]
    assert [r["pareto"] for r in rows] == ["yes", "yes", ""]  # 16 costs more than 24 and is worse
    assert [float(r["gmacs"]) for r in rows] == [0.1, 0.3, 0.4]
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| model.base_channels=24 |" in (sweep / "pareto.md").read_text() and "wrote" in done.stdout
    assert list((tmp_path / "logs" / "pareto").glob("*/pareto.log"))  # the house run directory


def test_pareto_takes_a_list_of_directories_an_output_and_maximize(sweep, tmp_path):
    other = tmp_path / "more"
    write_run(other / "0", ["experiment=fmnist_sd", "model.base_channels=32"], {"gmacs": 0.5, "val/loss": 0.35})
    done = run_pareto(tmp_path, f"dirs=[{sweep},{other},{sweep / '0'}]", f"output={tmp_path / 'out'}", "maximize=true")
    assert done.returncode == 0, done.stderr
    with (tmp_path / "out" / "pareto.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # sweep/0 is read once although two dirs hold it
    front = {r["run"] for r in rows if r["pareto"]}
    assert front == {"model.base_channels=8", "model.base_channels=32"}  # with maximize, the highest is best
    assert not (sweep / "pareto.csv").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "dirs is not set: give dirs=SWEEP_DIR"),
        (["metric=fid"], "metric=fid: no metrics.json has it; available keys: global_step, gmacs, params_m, val/loss"),
        (["dirs=missing"], "dirs: missing does not exist"),
    ],
)
def test_pareto_errors_name_the_key_without_a_traceback(sweep, tmp_path, overrides, message):
    if overrides and overrides[0].startswith("metric"):
        overrides = [f"dirs={sweep}", *overrides]
    done = run_pareto(tmp_path, *overrides)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
