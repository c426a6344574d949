"""Reproduction of Spectral Diffusion on Fashion-MNIST, by train.py and evaluate.py alone.

    python scripts/reproduce.py --budget cpu_short --ablations    # teacher, Lite and SD at 4x/8x/18x + ablations
    python scripts/reproduce.py --budget cpu --stage eval         # evaluate the runs that exist
    python scripts/reproduce.py --budget cpu --stage noise        # the 8x SD student at seeds 1 and 2 too
    python scripts/reproduce.py --budget cpu --stage report       # rewrite docs/results.md from metrics.json
    python scripts/reproduce.py --budget cpu --stage sweep        # tune the 8x SD student's recipe (Optuna)
    python scripts/reproduce.py --budget cpu --print-commands     # every command, nothing run

Budgets: ``cpu_short`` (about two hours on 2 cores: teacher 2000 steps, students 800), ``cpu``
(3000 steps each), ``gpu`` (20000 steps, 10k samples), ``smoke`` (the plumbing, in seconds).

The study, under one budget (the same optimizer steps, batch size and evaluation for every model):

- **teacher**: ``fmnist_small`` (``loss=denoising``);
- **Lite** at three widths, about 4x, 8x and 18x fewer GMACs: the teacher's UNet narrowed, plain
  sampling layers, no distillation (the paper's Lite-LDM);
- **SD** at the same three costs: wavelet-gated down/up-sampling, distilled from the teacher with
  the spectrum-aware loss (``loss=spectral_distill``);
- ``--ablations``, at the 8x width: SD without distillation, output only, + features, + frequency
  weights (= SD), and Lite with the full distillation loss.

This script has no metric code. Each model is one ``train.py`` run and one ``evaluate.py`` run; the
numbers in ``docs/results.md`` are read from the ``metrics.json`` that ``evaluate.py`` writes, and the
exact ``evaluate.py`` command of every row is printed beside the table, so any number can be
re-made by hand. Its protocol record (extractor and weights hash, quantisation, resize, samples,
seeds and noise, sampler and steps, reference split and size, EMA weights) is the table's.

Training runs are ordinary, resumable ``train.py`` runs (``logs/train/<prefix>_<budget>_<name>``): a
re-run resumes unfinished runs and skips finished ones; evaluations whose ``metrics.json`` exists
for the same command are not repeated.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where the runs go (logs/, docs/): the repository, the working directory of every command.
ROOT = Path(__file__).resolve().parents[1]
#: Where train.py and evaluate.py are.
CODE = Path(__file__).resolve().parents[1]

#: Model family -> preset; a width is the ``model.base_channels`` of the family.
FAMILIES = {"teacher": "fmnist_small", "lite": "fmnist_small", "sd": "fmnist_sd"}
#: ``model.base_channels`` of each family at each cost (the teacher has 32): GMACs about 4x, 8x and
#: 18x below the teacher's 0.249; evaluate.py measures the exact figure of each.
WIDTHS: dict[str, dict[str, int]] = {
    "4x": {"lite": 16, "sd": 17},
    "8x": {"lite": 11, "sd": 12},
    "18x": {"lite": 7, "sd": 8},
}

#: Training and evaluation size of each budget. ``smoke`` checks the plumbing in seconds.
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": {"steps": 3000, "student_steps": 3000, "batch_size": 64, "samples": 2000, "sampler_steps": 50,
            "trainer": "cpu", "lr": 1e-3, "sweep_steps": 600},
    "gpu": {"steps": 20000, "student_steps": 20000, "batch_size": 128, "samples": 10000, "sampler_steps": 100,
            "trainer": "gpu", "lr": 1e-3, "sweep_steps": 5000},
    # What fits about two hours on the 2-core CPU: the teacher 2000 steps, the students 800 steps
    # each, Optuna trials of 200 steps.
    "cpu_short": {"steps": 2000, "student_steps": 800, "batch_size": 64, "samples": 1000, "sampler_steps": 50,
                  "trainer": "cpu", "lr": 1e-3, "sweep_steps": 200},
    "smoke": {"steps": 2, "student_steps": 2, "batch_size": 8, "samples": 16, "sampler_steps": 2,
              "trainer": "cpu", "lr": 1e-3, "sweep_steps": 2},
}  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One model of the study: its family, cost, loss and label."""

    name: str
    family: str  # teacher | lite | sd
    width: str | None  # 4x | 8x | 18x (None: the teacher)
    loss: str
    label: str
    extra: tuple[str, ...] = ()

    @property
    def distilled(self) -> bool:
        return self.loss != "denoising"


def study_runs(ablations: bool) -> list[Run]:
    """The teacher first (the distilled runs need it), then the widths, then the ablations."""
    runs = [Run("teacher", "teacher", None, "denoising", "Teacher")]
    for width in WIDTHS:
        runs.append(Run(f"lite_{width}", "lite", width, "denoising", f"Lite {width}"))
        runs.append(
            Run(f"sd_{width}", "sd", width, "spectral_distill", f"SD {width} (WG + spectrum-aware distillation)")
        )
    if ablations:
        runs += [
            Run("sd_8x_no_distill", "sd", "8x", "denoising", "SD 8x gates, no distillation"),
            Run("sd_8x_output", "sd", "8x", "distill_output", "SD 8x gates, output-only distillation"),
            Run("sd_8x_features", "sd", "8x", "distill_features", "SD 8x gates, output + features (no freq. term)"),
            Run("lite_8x_distill", "lite", "8x", "spectral_distill", "Lite 8x + spectrum-aware distillation"),
        ]
    return runs


# -- commands -------------------------------------------------------------------------------------
def run_name(prefix: str, budget: str, run: Run) -> str:
    return f"{prefix}_{budget}_{run.name}"


def train_dir(prefix: str, budget: str, run: Run) -> Path:
    return ROOT / "logs" / "train" / run_name(prefix, budget, run)


def last_checkpoint(prefix: str, budget: str, run: Run) -> str:
    """The run's last.ckpt as the commands name it: relative to the directory they run in (ROOT)."""
    return str(Path("logs") / "train" / run_name(prefix, budget, run) / "checkpoints" / "last.ckpt")


def model_overrides(run: Run) -> list[str]:
    overrides = [f"model={FAMILIES[run.family]}"]
    if run.width is not None:
        # Two heads at every width: the narrow levels keep attention (channels // 2 per head).
        overrides += [f"model.base_channels={WIDTHS[run.width][run.family]}", "++model.num_heads=2"]
    return overrides


def train_command(prefix: str, budget: str, run: Run) -> list[str]:
    """``train.py`` with the budget's settings; distilled runs read the teacher's last checkpoint."""
    spec = BUDGETS[budget]
    steps = spec["steps"] if run.family == "teacher" else spec["student_steps"]
    every = max(steps // 4, 1)
    command = [
        "train.py",
        "experiment=fmnist_quickstart",
        f"run_name={run_name(prefix, budget, run)}",
        *model_overrides(run),
        f"loss={run.loss}",
        f"trainer={spec['trainer']}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={every}",
        f"data.batch_size={spec['batch_size']}",
        f"module.optimizer.lr={spec['lr']}",
        f"callbacks.model_checkpoint.every_n_train_steps={every}",
        f"callbacks.sample_grid.every_n_steps={every}",
        "logger=csv",
        *run.extra,
    ]
    if run.distilled:
        teacher = last_checkpoint(prefix, budget, study_runs(False)[0])
        command += ["teacher=checkpoint", f"teacher.ckpt_path={teacher}"]
    return command


#: Extra evaluate.py overrides (``--eval-overrides``), e.g. ``metrics.fid.weights_path=FILE``.
EVAL_OVERRIDES: list[str] = []


def evaluation_name(prefix: str, budget: str, run: Run, seed: int = 0) -> str:
    """The evaluate.py run name: the training run's, with ``_seedN`` for the seed-noise evaluations."""
    return run_name(prefix, budget, run) + (f"_seed{seed}" if seed else "")


def evaluate_command(prefix: str, budget: str, run: Run, seed: int = 0) -> list[str]:
    """The one protocol: ``evaluate.py`` on the run's last checkpoint (EMA weights).

    The table's numbers use seed 0; other seeds (``--stage noise``) measure the seed noise.
    """
    spec = BUDGETS[budget]
    return [
        "evaluate.py",
        f"ckpt_path={last_checkpoint(prefix, budget, run)}",
        f"run_name={evaluation_name(prefix, budget, run, seed)}",
        "metrics=[fid,macs,params,throughput]",
        "metrics.fid.feature_extractor=fmnist_classifier",
        f"num_samples={spec['samples']}",
        f"sampler.steps={spec['sampler_steps']}",
        "sampler.eta=1.0",
        f"seed={seed}",
        "use_ema=true",
        f"batch_size={min(250, spec['samples'])}",
        # Sampling speed: one timed batch of 100, the same for every row. No untimed warm-up batch:
        # the FD's samples, generated just before in the same process, have warmed everything up.
        f"metrics.throughput.batch_size={min(100, spec['samples'])}",
        "metrics.throughput.warmup=0",
        "grid_samples=64",
        *EVAL_OVERRIDES,
    ]


def shown(command: list[str]) -> str:
    return "python " + " ".join(shlex.quote(part) for part in command)


def call(command: list[str], log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shown(command)}\n  log: {log_file}", flush=True)
    with open(log_file, "a") as log:
        script = str(CODE / command[0])
        result = subprocess.run([sys.executable, script, *command[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed (exit {result.returncode}); see {log_file}")


# -- stages ---------------------------------------------------------------------------------------
def finished(metrics_file: Path, steps: int) -> bool:
    if not metrics_file.is_file():
        return False
    return json.loads(metrics_file.read_text()).get("global_step", 0) >= steps


def train_stage(prefix: str, budget: str, runs: list[Run]) -> None:
    spec = BUDGETS[budget]
    for run in runs:
        steps = spec["steps"] if run.family == "teacher" else spec["student_steps"]
        out = train_dir(prefix, budget, run)
        if finished(out / "metrics.json", steps):
            print(f"[{run.name}] finished already: {out}")
            continue
        start = time.perf_counter()
        call(train_command(prefix, budget, run), out.with_suffix(".log"))
        print(f"[{run.name}] trained in {time.perf_counter() - start:.0f} s", flush=True)


def evaluation_dir(prefix: str, budget: str, run: Run, seed: int = 0) -> Path:
    return ROOT / "logs" / "evaluate" / evaluation_name(prefix, budget, run, seed)


def evaluate_stage(prefix: str, budget: str, runs: list[Run], seeds: tuple[int, ...] = (0,)) -> None:
    for run, seed in ((run, seed) for run in runs for seed in seeds):
        if not (train_dir(prefix, budget, run) / "checkpoints" / "last.ckpt").is_file():
            print(f"[{run.name}] no checkpoint yet, skipped")
            continue
        command = evaluate_command(prefix, budget, run, seed)
        out = evaluation_dir(prefix, budget, run, seed)
        done = out / "metrics.json"
        stamp = out / "reproduce_command.txt"
        if done.is_file() and stamp.is_file() and stamp.read_text() == shown(command):
            print(f"[{run.name}] evaluated already: {done}")
            continue
        done.unlink(missing_ok=True)
        call(command, out.with_suffix(".log"))
        stamp.write_text(shown(command))


def sweep_command(prefix: str, budget: str, trials: int) -> list[str]:
    """Optuna over the 8x SD student's recipe (lr, EMA, lambda_s, lambda_f, alpha): trials of the budget's
    ``sweep_steps``, each scored by its validation denoising MSE (``val/ddpm``)."""
    spec = BUDGETS[budget]
    run = next(r for r in study_runs(False) if r.name == "sd_8x")
    teacher = last_checkpoint(prefix, budget, study_runs(False)[0])
    steps = spec["sweep_steps"]
    return [
        "train.py",
        "-m",
        "experiment=fmnist_quickstart",
        "hparams_search=fmnist_sd_distill_optuna",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweeper.study_name={prefix}_{budget}_sd_8x",
        f"run_name={prefix}_{budget}_sweep_sd_8x",
        *model_overrides(run),
        "loss=spectral_distill",
        "teacher=checkpoint",
        f"teacher.ckpt_path={teacher}",
        f"trainer={spec['trainer']}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={max(steps // 4, 1)}",
        f"data.batch_size={spec['batch_size']}",
        f"callbacks.model_checkpoint.every_n_train_steps={max(steps // 4, 1)}",
        "callbacks.sample_grid=null",
        "logger=csv",
    ]


def sweep_dir(prefix: str, budget: str) -> Path:
    """Where ``--stage sweep`` puts its Optuna trials (configs/hparams_search/fmnist_sd_distill_optuna.yaml)."""
    return ROOT / "logs" / "train" / "optuna" / f"{prefix}_{budget}_sd_8x"


def sweep_section(prefix: str, budget: str, trials_shown: int = 8) -> list[str]:
    """Markdown lines: the sweep's trials as scripts/pareto.py tabled them (best first), if it ran."""
    table = sweep_dir(prefix, budget) / "pareto.md"
    if not table.is_file():
        return []
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    rows.sort(key=lambda line: float(line.split("|")[4]))  # the val/ddpm column
    return [
        "### Recipe sweep (Optuna, 8x SD student)",
        "",
        f"`python scripts/reproduce.py --budget {budget} --stage sweep`: `train.py -m "
        "hparams_search=fmnist_sd_distill_optuna` (TPE over lr, lambda_s, lambda_f, alpha and the EMA decay; "
        f"trials of {BUDGETS[budget]['sweep_steps']} steps, scored by val/ddpm), then `scripts/pareto.py`. "
        f"The {min(trials_shown, len(rows))} best of {len(rows)} trials:",
        "",
        "| trial overrides | GMACs | params (M) | val/ddpm |",
        "|---|---|---|---|",
        *["|".join(line.split("|")[:5]) + "|" for line in rows[:trials_shown]],
        "",
    ]


def read_row(prefix: str, budget: str, run: Run) -> dict[str, Any] | None:
    """The figures of one run, as evaluate.py and train.py wrote them."""
    done = evaluation_dir(prefix, budget, run) / "metrics.json"
    if not done.is_file():
        return None
    evaluated = json.loads(done.read_text())
    trained_file = train_dir(prefix, budget, run) / "metrics.json"
    trained = json.loads(trained_file.read_text()) if trained_file.is_file() else {}
    return {
        "name": run.name,
        "label": run.label,
        "family": run.family,
        "width": run.width,
        "loss": run.loss,
        "fd_fmnist": evaluated["fd_fmnist"],
        "gmacs": evaluated["gmacs"],
        "params_m": evaluated["params_m"],
        "samples_per_s": evaluated["samples_per_s"],
        "train_seconds": trained.get("fit_seconds"),
        "train_resumed": trained.get("resumed"),
        "global_step": evaluated.get("global_step"),
        "samples_png": evaluated.get("samples_png"),
        "protocol": evaluated["protocol"],
        "command": shown(evaluate_command(prefix, budget, run)),
    }


def seed_noise(prefix: str, budget: str, runs: list[Run]) -> list[str]:
    """Markdown lines: the FD of each run evaluated at more seeds than 0 (``--stage noise``)."""
    lines = []
    for run in runs:
        fds = []
        for seed in range(10):
            done = evaluation_dir(prefix, budget, run, seed) / "metrics.json"
            if done.is_file():
                fds.append((seed, json.loads(done.read_text())["fd_fmnist"]))
        if len(fds) > 1:
            values = [fd for _, fd in fds]
            lines.append(
                f"- {run.label}: FD {', '.join(f'{fd:.2f}' for fd in values)} at seeds "
                f"{', '.join(str(seed) for seed, _ in fds)}; standard deviation {statistics.stdev(values):.2f}, "
                f"range {max(values) - min(values):.2f} ({(max(values) - min(values)) / values[0]:.1%} of the seed-0 FD)."
            )
    return lines


def write_figure(budget: str, rows: list[dict[str, Any]]) -> Path:
    """FD against GMACs (teacher, the Lite curve, the SD curve), and against training and sampling time."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), dpi=110)
    costs = [
        ("gmacs", "GMACs per forward pass", lambda r: r["gmacs"]),
        ("train", "training seconds (Trainer.fit)", lambda r: r["train_seconds"]),
        ("sample", "sampling seconds per 1k samples", lambda r: 1000 / r["samples_per_s"]),
    ]
    for ax, (_, xlabel, cost) in zip(axes, costs, strict=True):
        for family, style in (("lite", "o-"), ("sd", "*-")):
            curve = sorted(
                (
                    r
                    for r in rows
                    if r["family"] == family and r["loss"] == ("denoising" if family == "lite" else "spectral_distill")
                ),
                key=lambda r: r["gmacs"],
            )
            curve = [r for r in curve if cost(r) is not None]
            if curve:
                ax.plot(
                    [cost(r) for r in curve],
                    [r["fd_fmnist"] for r in curve],
                    style,
                    label={"lite": "Lite", "sd": "SD"}[family],
                )
        for r in rows:
            if r["family"] == "teacher" and cost(r) is not None:
                ax.scatter([cost(r)], [r["fd_fmnist"]], marker="s", s=80, color="k", label="teacher", zorder=3)
            elif r["name"].startswith(("sd_8x_", "lite_8x_")) and cost(r) is not None:
                ax.scatter([cost(r)], [r["fd_fmnist"]], marker="x", s=50, label=r["label"])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # crowded labels on a short log range
        ax.set_xlabel(xlabel + " (log)")
        ax.set_ylabel("FD (Fashion-MNIST classifier features)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Fashion-MNIST, {budget} budget: quality against cost (evaluate.py)")
    fig.tight_layout()
    path = ROOT / "docs" / f"results_{budget}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


#: docs/results.md keeps everything after this line when the tables above it are rewritten.
HAND_WRITTEN_MARKER = "<!-- Below: sections not written by scripts/reproduce.py (kept when it rewrites the tables) -->"


def protocol_line(protocol: dict[str, Any]) -> str:
    keys = (
        "feature_extractor",
        "quantize",
        "resize",
        "num_samples",
        "seed",
        "noise",
        "sampler",
        "steps",
        "eta",
        "weights",
    )
    parts = [f"{k} `{protocol.get(k)}`" for k in keys]
    ref = protocol.get("reference", {})
    parts.append(f"reference `{ref.get('split')}` split, {ref.get('num_images')} images")
    return ", ".join(parts)


def model_table(rows: list[dict[str, Any]], teacher: dict[str, Any]) -> list[str]:
    """Every model of ``rows``: cost, FD, and measured training and sampling speed."""
    table = [
        "| model | params (M) | GMACs | teacher GMACs / GMACs | FD | FD / teacher FD | train s | samples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        train_s = (
            f"{r['train_seconds']:.0f}" + (" (resumed)" if r["train_resumed"] else "") if r["train_seconds"] else "-"
        )
        table.append(
            f"| {r['label']} | {r['params_m']:.3f} | {r['gmacs']:.4f} | {teacher['gmacs'] / r['gmacs']:.1f}x | "
            f"{r['fd_fmnist']:.2f} | {r['fd_fmnist'] / teacher['fd_fmnist']:.2f}x | {train_s} | {r['samples_per_s']:.1f} |"
        )
    return table


def front_table(rows: list[dict[str, Any]], teacher: dict[str, Any]) -> list[str]:
    """One line per width: Lite against SD at (about) the same GMACs."""
    by_name = {r["name"]: r for r in rows}
    table = [
        "| width | Lite GMACs | Lite FD | SD GMACs | SD FD | SD FD / Lite FD | SD FD / teacher FD |",
        "|---|---|---|---|---|---|---|",
    ]
    for width in WIDTHS:
        lite, sd = by_name.get(f"lite_{width}"), by_name.get(f"sd_{width}")
        if lite is None or sd is None:
            continue
        table.append(
            f"| {width} | {lite['gmacs']:.4f} | {lite['fd_fmnist']:.2f} | {sd['gmacs']:.4f} | {sd['fd_fmnist']:.2f} | "
            f"{sd['fd_fmnist'] / lite['fd_fmnist']:.2f} | {sd['fd_fmnist'] / teacher['fd_fmnist']:.2f}x |"
        )
    return table


def write_markdown(
    budget: str, rows: list[dict[str, Any]], figure: Path, findings: str, noise: list[str], sweep: list[str]
) -> Path:
    teacher = next(r for r in rows if r["family"] == "teacher")
    ablation_names = {"lite_8x", "sd_8x"} | {
        r.name for r in study_runs(True) if r.name.startswith(("sd_8x_", "lite_8x_"))
    }
    ablations = [r for r in rows if r["name"] in ablation_names]
    width_rows = [r for r in rows if not r["name"].startswith(("sd_8x_", "lite_8x_"))]
    table = [
        "### Widths: Lite against SD",
        "",
        *front_table(rows, teacher),
        "",
        *model_table(width_rows, teacher),
    ]
    if len(ablations) > 2:
        table += ["", "### Ablations at 8x", "", *model_table(ablations, teacher)]
    lines = [
        f"## Budget: {budget}",
        "",
        f"Written by `python scripts/reproduce.py --budget {budget}{' --ablations' if len(ablations) > 2 else ''}`. Protocol of every row (evaluate.py's "
        f"record): {protocol_line(teacher['protocol'])}.",
        "",
        *table,
        "",
        f"![FD against GMACs, training and sampling time]({figure.name})",
        "",
        "Samples (64 per model, the same seeds for every model): "
        + ", ".join(f"[{r['name']}]({r['grid']})" for r in rows if r.get("grid")),
        "",
        "Each row is re-made by its `evaluate.py` command:",
        "",
        "```",
        *[r["command"] for r in rows],
        "```",
        "",
    ]
    if noise:
        lines += [
            "### Seed noise",
            "",
            "The same checkpoint and protocol at other sampling seeds (`--stage noise`; each is the row's "
            "command with `seed=N`). A difference between two rows smaller than this is not a finding.",
            "",
            *noise,
            "",
        ]
    lines += sweep
    if findings:
        lines += ["### Findings", "", findings, ""]
    out = ROOT / "docs" / "results.md"
    header = [
        "# Reproduction: teacher, Lite and SD on Fashion-MNIST",
        "",
        "All numbers below come from `evaluate.py` (one protocol, recorded in each run's `metrics.json`);",
        "`scripts/reproduce.py` only runs `train.py` and `evaluate.py` and collects their files.",
        "",
    ]
    old = out.read_text() if out.is_file() else ""
    kept = HAND_WRITTEN_MARKER + old.split(HAND_WRITTEN_MARKER, 1)[1] if HAND_WRITTEN_MARKER in old else ""
    out.write_text("\n".join(header + lines) + ("\n" + kept if kept else ""))
    return out


def report_stage(prefix: str, budget: str, runs: list[Run], findings: str) -> None:
    rows = [row for run in runs if (row := read_row(prefix, budget, run)) is not None]
    if not any(r["family"] == "teacher" for r in rows):
        raise SystemExit("no evaluated teacher yet: run --stage eval first")
    figure = write_figure(budget, rows)
    for row in rows:  # each row's sample grid (evaluate.py's samples.png, the same seeds for all) beside the page
        grid = Path(row["samples_png"]) if row.get("samples_png") else None
        if grid is not None and grid.is_file():
            shutil.copyfile(grid, ROOT / "docs" / f"results_{budget}_{row['name']}.png")
            row["grid"] = f"results_{budget}_{row['name']}.png"
    result = {"budget": budget, "rows": rows, "figure": str(figure.relative_to(ROOT))}
    (ROOT / "docs" / f"results_{budget}.json").write_text(json.dumps(result, indent=2) + "\n")
    noise = seed_noise(prefix, budget, runs)
    markdown = write_markdown(budget, rows, figure, findings, noise, sweep_section(prefix, budget))
    print(f"wrote {markdown} and {figure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--stage", choices=["all", "train", "eval", "report", "sweep", "noise"], default="all")
    parser.add_argument("--ablations", action="store_true", help="also the ablations at the 8x width")
    parser.add_argument("--runs", nargs="+", help="only these runs")
    parser.add_argument("--run-prefix", default="repro", help="run names are <prefix>_<budget>_<model>")
    parser.add_argument("--trials", type=int, default=12, help="Optuna trials of --stage sweep")
    parser.add_argument("--findings", default="", help="a markdown file whose text goes under Findings")
    parser.add_argument("--noise-seeds", type=int, nargs="+", default=[1, 2], help="seeds of --stage noise")
    parser.add_argument("--eval-overrides", nargs="*", default=[], help="extra evaluate.py overrides")
    parser.add_argument("--print-commands", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    EVAL_OVERRIDES[:] = args.eval_overrides
    runs = study_runs(args.ablations or bool(args.runs))
    if args.runs:
        known = {r.name for r in runs}
        unknown = sorted(set(args.runs) - known)
        if unknown:
            parser.error(f"unknown runs {unknown}; choose from {sorted(known)}")
        runs = [r for r in runs if r.name in args.runs]
    prefix, budget = args.run_prefix, args.budget
    if args.print_commands:
        for run in runs:
            print(shown(train_command(prefix, budget, run)))
            print(shown(evaluate_command(prefix, budget, run)))
        return 0
    if args.stage == "sweep":
        call(sweep_command(prefix, budget, args.trials), ROOT / "logs" / "train" / f"{prefix}_{budget}_sweep.log")
        trials = sweep_dir(prefix, budget)
        call(["scripts/pareto.py", f"dirs={trials}", "metric=val/ddpm"], trials.with_suffix(".pareto.log"))
        return 0
    if args.stage in ("all", "train"):
        train_stage(prefix, budget, runs)
    if args.stage in ("all", "eval"):
        evaluate_stage(prefix, budget, runs)
    if args.stage == "noise":  # the --runs (default: the 8x SD student) again at other seeds
        chosen = runs if args.runs else [r for r in runs if r.name == "sd_8x"]
        evaluate_stage(prefix, budget, chosen, tuple(args.noise_seeds))
    if args.stage in ("all", "report"):
        findings = Path(args.findings).read_text().strip() if args.findings else ""
        report_stage(prefix, budget, runs, findings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
