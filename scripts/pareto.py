"""Collect a sweep's ``metrics.json`` files into a cost-against-quality plot and table.

    python scripts/pareto.py dirs=logs/train/multirun/NAME [metric=fid] [output=DIR]
    python scripts/pareto.py "dirs=[logs/evaluate/sweep_a,logs/evaluate/sweep_b]" metric=fd_fmnist

The config is ``configs/pareto.yaml``. Every ``metrics.json`` below the directories ``dirs`` (one,
or a list) is read: ``train.py`` writes one per run (``gmacs``, ``params_m``, the optimised metric
and ``metrics``, its final callback metrics such as ``val/loss``), ``evaluate.py`` one per
evaluation (``gmacs``, ``fid`` or ``fd_fmnist``, and its teacher's figures under ``teacher``). Each
run is labelled by the Hydra overrides that differ between the runs (read from
``<run dir>/.hydra/overrides.yaml``).

Writes to ``output`` (default: the first directory):
- ``pareto.png``: GMACs against the quality metric, the Pareto front (cheapest for its quality)
  highlighted and joined, teachers (from evaluate's ``teacher``) as stars;
- ``pareto.md`` and ``pareto.csv``: one row per run, sorted by cost, with a front column.

``metric`` picks the quality key (default: the first of fid, fd_fmnist, kid_mean, val/loss
that every run has); lower is better unless ``maximize=true``. ``cost`` is the cost key
(``gmacs``). A config or set of runs that cannot work ends with status 2 and one message naming
the key (``utils/cli.py``). The log goes to ``logs/pareto/<time>/``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig, ListConfig

from spectral_diffusion.utils.cli import report_user_errors
from spectral_diffusion.utils.cli import run as run_entry_point  # `run` is this script's word for a training run
from spectral_diffusion.utils.run import register_resolvers, task_wrapper

log = logging.getLogger("pareto")
register_resolvers()

#: Quality keys tried in this order when ``metric`` is not given.
DEFAULT_METRICS = ("fid", "fd_fmnist", "kid_mean", "val/loss")


class ConfigError(ValueError):
    """The config, or the runs it points at, cannot give a plot (the message names the key)."""


@dataclass
class Run:
    """One point: a run's cost, its scalars, and where it came from."""

    path: Path
    label: str
    values: dict[str, float]
    overrides: list[str] = field(default_factory=list)
    teacher: bool = False


def flatten(record: dict[str, Any]) -> dict[str, float]:
    """The numeric scalars of a metrics.json: top level, plus train's ``metrics`` dict."""
    values: dict[str, float] = {}
    for key, value in {**record.get("metrics", {}), **record}.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
    return values


def read_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


def load_runs(dirs: list[Path]) -> list[Run]:
    """Every metrics.json below ``dirs``, each once even where the dirs overlap (and evaluate's
    teachers, once per teacher source)."""
    runs: list[Run] = []
    teachers: dict[str, Run] = {}
    seen: set[Path] = set()
    for root in dirs:
        if not root.exists():
            raise ConfigError(f"dirs: {root} does not exist; give a sweep (or run) directory, or a list of them")
        for path in sorted(root.rglob("metrics.json")):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ConfigError(f"{path} is not valid JSON: {error}") from error
            if not isinstance(record, dict):
                raise ConfigError(f"{path} holds a {type(record).__name__}, not a JSON object of metrics")
            run_dir = path.parent
            runs.append(Run(path, str(run_dir), flatten(record), read_overrides(run_dir)))
            teacher = record.get("teacher")
            if isinstance(teacher, dict):
                source = str(teacher.get("source", "teacher"))
                teachers.setdefault(source, Run(path, f"teacher {source}", flatten(teacher), teacher=True))
    if not runs:
        raise ConfigError(f"dirs: no metrics.json below {', '.join(map(str, dirs))}")
    label_by_overrides(runs)
    return runs + list(teachers.values())


def label_by_overrides(runs: list[Run]) -> None:
    """Label each run by the overrides that are not shared by every run (its point in the sweep)."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    for run in runs:
        distinct = [o for o in run.overrides if o not in common]
        if distinct:
            run.label = " ".join(distinct)
    labels = [r.label for r in runs]
    for run in runs:  # equal overrides (e.g. re-runs): fall back to the directory
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.path.parent})"


def pick_metric(runs: list[Run], metric: str | None) -> str:
    """The quality key: the one asked for, or the first default that every run has."""
    students = [r for r in runs if not r.teacher]
    if metric is not None:
        missing = [str(r.path) for r in students if metric not in r.values]
        if len(missing) == len(students):
            available = sorted(set().union(*(r.values for r in students)))
            raise ConfigError(f"metric={metric}: no metrics.json has it; available keys: {', '.join(available)}")
        return metric
    for candidate in DEFAULT_METRICS:
        if all(candidate in r.values for r in students):
            return candidate
    available = sorted(set.intersection(*(set(r.values) for r in students)))
    raise ConfigError(
        f"none of {', '.join(DEFAULT_METRICS)} is in every metrics.json; pass metric=..., one of: {', '.join(available)}"
    )


def pareto_front(points: list[tuple[float, float]], maximize: bool = False) -> list[bool]:
    """Whether each (cost, quality) point is Pareto-optimal: no other point is at least as cheap
    and at least as good, and strictly better in one of the two. Lower quality is better unless
    ``maximize``."""
    sign = -1.0 if maximize else 1.0
    keyed = [(c, sign * q) for c, q in points]
    front = []
    for i, (cost, quality) in enumerate(keyed):
        dominated = any(
            c <= cost and q <= quality and (c < cost or q < quality) for j, (c, q) in enumerate(keyed) if j != i
        )
        front.append(not dominated)
    return front


def usable(runs: list[Run], cost: str, metric: str) -> list[Run]:
    """Runs with a finite cost and metric; the others are reported and left out."""
    kept = []
    for run in runs:
        missing = [k for k in (cost, metric) if not math.isfinite(run.values.get(k, math.nan))]
        if missing:
            log.warning("leaving out %s: no finite %s", run.path, " or ".join(missing))
        else:
            kept.append(run)
    if not kept:
        raise ConfigError(f"no run has both a finite {cost} and {metric} (cost={cost}, metric={metric})")
    return kept


def write_table(runs: list[Run], front: list[bool], cost: str, metric: str, output: Path) -> tuple[Path, Path]:
    """pareto.md and pareto.csv, sorted by cost."""
    order = sorted(range(len(runs)), key=lambda i: (runs[i].values[cost], runs[i].values[metric]))
    header = ["run", cost, "params_m", metric, "pareto", "path"]
    rows = []
    for i in order:
        run = runs[i]
        params = run.values.get("params_m")
        rows.append(
            [
                run.label,
                f"{run.values[cost]:.4g}",
                f"{params:.3f}" if params is not None else "",
                f"{run.values[metric]:.6g}",
                "yes" if front[i] else "",
                str(run.path),
            ]
        )
    md = output / "pareto.md"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    md.write_text("\n".join(lines) + "\n")
    csv_path = output / "pareto.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return md, csv_path


def plot(runs: list[Run], front: list[bool], cost: str, metric: str, maximize: bool, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    students = [(r, f) for r, f in zip(runs, front, strict=True) if not r.teacher]
    for run, on_front in students:
        ax.scatter(
            run.values[cost],
            run.values[metric],
            s=40,
            color="tab:red" if on_front else "tab:gray",
            zorder=3,
            edgecolor="black" if on_front else "none",
        )
        ax.annotate(
            run.label, (run.values[cost], run.values[metric]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    line = sorted((r.values[cost], r.values[metric]) for r, f in students if f)
    if len(line) > 1:
        ax.plot(*zip(*line, strict=True), color="tab:red", linewidth=1.2, label="Pareto front", zorder=2)
    for run in (r for r in runs if r.teacher):
        ax.scatter(run.values[cost], run.values[metric], marker="*", s=160, color="tab:blue", label=run.label, zorder=3)
    costs = [r.values[cost] for r in runs]
    if min(costs) > 0 and max(costs) / min(costs) > 20:
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{cost} per forward pass" if cost == "gmacs" else cost)
    ax.set_ylabel(f"{metric} ({'higher' if maximize else 'lower'} is better)")
    ax.set_title(f"{len(students)} runs: {cost} against {metric}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def directories(value: Any) -> list[Path]:
    """``dirs`` as a list of paths: one directory, or a list of them."""
    if isinstance(value, (list, ListConfig)):
        dirs = [Path(str(v)).expanduser() for v in value]
    elif value is not None and str(value):
        dirs = [Path(str(value)).expanduser()]
    else:
        dirs = []
    if not dirs:
        raise ConfigError("dirs is not set: give dirs=SWEEP_DIR, or dirs=[DIR1,DIR2], of train.py or evaluate.py runs")
    return dirs


@task_wrapper
def make_pareto(cfg: DictConfig) -> dict[str, Any]:
    """Read the runs, mark the front, write the table and the plot; return what was written."""
    dirs = directories(cfg.dirs)
    if not str(cfg.cost):
        raise ConfigError("cost is empty: give the cost key, e.g. cost=gmacs")
    runs = load_runs(dirs)
    metric = pick_metric(runs, cfg.metric)
    runs = usable(runs, cfg.cost, metric)
    front = pareto_front([(r.values[cfg.cost], r.values[metric]) for r in runs], cfg.maximize)
    output = Path(str(cfg.output)).expanduser() if cfg.output is not None else dirs[0]
    output.mkdir(parents=True, exist_ok=True)
    md, csv_path = write_table(runs, front, cfg.cost, metric, output)
    png = plot(runs, front, cfg.cost, metric, cfg.maximize, output / "pareto.png")
    print(md.read_text(), end="")
    print(f"wrote {png}, {md}, {csv_path}")
    return {
        "metric": metric,
        "png": png,
        "md": md,
        "csv": csv_path,
        "front": [r.label for r, on_front in zip(runs, front, strict=True) if on_front],
    }


@hydra.main(version_base="1.3", config_path="../configs", config_name="pareto")
@report_user_errors
def main(cfg: DictConfig) -> None:
    make_pareto(cfg)


if __name__ == "__main__":
    run_entry_point(main)
