"""Small-scale reproduction of Spectral Diffusion on Fashion-MNIST: teacher vs Lite vs SD.

    python scripts/reproduce.py --budget cpu            # train the three models, evaluate, write docs/results.md
    python scripts/reproduce.py --budget cpu --ablations  # also the ablation runs that explain the result
    python scripts/reproduce.py --budget gpu --stage eval # evaluate runs that exist, train nothing

Under one budget (the same optimizer steps and batch size for every model) it trains:

- **teacher**: a plain UNet (``loss=denoising``);
- **Lite**: the same UNet family narrowed to the student's GMACs: conv down-sampling, nearest+conv
  up-sampling, no distillation (the paper's Lite-LDM);
- **SD**: the wavelet-gated student (WG-Down / WG-Up) distilled from the teacher with the
  spectrum-aware loss (``loss=spectral_distill``).

``--ablations`` adds SD without distillation, SD with output-only and output+feature distillation,
and Lite with the full distillation loss, which separate the effect of the gates from the loss's.

Each model is evaluated with the same sampler and seed on ``--samples`` images: the Fréchet distance
(FD) in the feature space of the offline Fashion-MNIST classifier (``scripts/train_fid_classifier.py``;
reported as ``fd_fmnist``, not as Inception FID) against the 10k test images, params, GMACs per
forward pass and sampling time. Results go to ``docs/results_<budget>.json``, the sample grids and
a figure to ``docs/``, and the tables of every budget run so far to ``docs/results.md``.

Every training run is an ordinary ``train.py`` run (``logs/train/repro_<budget>_<name>``): re-running
this script resumes unfinished runs and skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spectral_diffusion.assembly import load_run  # noqa: E402
from spectral_diffusion.data.fashion_mnist import load_split, locate_fashion_mnist  # noqa: E402
from spectral_diffusion.diffusion.samplers import DDIMSampler, sample  # noqa: E402
from spectral_diffusion.evaluation.cost import count_gmacs, count_params  # noqa: E402
from spectral_diffusion.evaluation.fmnist_classifier import DEFAULT_WEIGHTS, FMNISTFeatureExtractor  # noqa: E402
from spectral_diffusion.evaluation.frechet import FeatureStatistics  # noqa: E402
from spectral_diffusion.utils.checkpoint import load_checkpoint  # noqa: E402
from spectral_diffusion.utils.images import save_grid  # noqa: E402

#: Model presets, training length and evaluation size of each budget.
BUDGETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "models": {"teacher": "fmnist_small", "lite": "fmnist_tiny_lite", "sd": "fmnist_tiny_sd"},
        "steps": 2000,
        "batch_size": 64,
        "samples": 1000,
        "sampler_steps": 50,
        "trainer": "cpu",
    },
    "gpu": {
        "models": {"teacher": "fmnist_base", "lite": "fmnist_lite", "sd": "fmnist_sd"},
        "steps": 20000,
        "batch_size": 128,
        "samples": 10000,
        "sampler_steps": 100,
        "trainer": "gpu",
    },
}

#: name -> (model role, loss config, needs the teacher). The first three are the reproduction.
RUNS: dict[str, tuple[str, str]] = {
    "teacher": ("teacher", "denoising"),
    "lite": ("lite", "denoising"),
    "sd": ("sd", "spectral_distill"),
}
ABLATIONS: dict[str, tuple[str, str]] = {
    "sd_no_distill": ("sd", "denoising"),
    "sd_distill_output": ("sd", "distill_output"),
    "sd_distill_features": ("sd", "distill_features"),
    "lite_spectral_distill": ("lite", "spectral_distill"),
}
LABELS = {
    "teacher": "Teacher",
    "lite": "Lite (no WG, no distillation)",
    "sd": "SD (WG + spectrum-aware distillation)",
    "sd_no_distill": "SD gates, no distillation",
    "sd_distill_output": "SD gates, output-only distillation",
    "sd_distill_features": "SD gates, output+feature distillation (no freq. term)",
    "lite_spectral_distill": "Lite + spectrum-aware distillation",
}


#: Prefix of the run names (``--run-prefix``), e.g. to keep a smoke test apart from the real runs.
RUN_PREFIX = ["repro"]


def run_dir(budget: str, name: str) -> Path:
    return ROOT / "logs" / "train" / f"{RUN_PREFIX[0]}_{budget}_{name}"


def train_run(budget: str, name: str, role: str, loss: str, extra: list[str]) -> Path:
    """Train (or resume, or skip if finished) one model through train.py; returns its last.ckpt."""
    spec = BUDGETS[budget]
    ckpt = run_dir(budget, name) / "checkpoints" / "last.ckpt"
    if ckpt.is_file() and load_checkpoint(ckpt, mmap=True).get("global_step", 0) >= spec["steps"]:
        print(f"[{name}] finished already: {ckpt}")
        return ckpt
    every = max(spec["steps"] // 3, 1)
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        f"run_name={run_dir(budget, name).name}",
        f"model={spec['models'][role]}",
        "diffusion=ddpm_linear",
        f"loss={loss}",
        f"trainer={spec['trainer']}",
        f"trainer.max_steps={spec['steps']}",
        f"trainer.val_check_interval={every}",
        f"data.batch_size={spec['batch_size']}",
        f"callbacks.model_checkpoint.every_n_train_steps={every}",
        f"callbacks.sample_grid.every_n_steps={every}",
        "callbacks.progress=null",
        "logger=csv",
        *extra,
    ]
    if loss != "denoising":
        teacher_ckpt = run_dir(budget, "teacher") / "checkpoints" / "last.ckpt"
        command += ["teacher=checkpoint", f"teacher.ckpt_path={teacher_ckpt}"]
    log_file = run_dir(budget, name).with_suffix(".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] training: {' '.join(command[2:])}\n[{name}] log: {log_file}", flush=True)
    start = time.perf_counter()
    with open(log_file, "a") as log:
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"[{name}] train.py failed (exit {result.returncode}); see {log_file}")
    print(f"[{name}] trained in {time.perf_counter() - start:.0f} s", flush=True)
    return ckpt


def reference_statistics(extractor: FMNISTFeatureExtractor, cache: Path) -> FeatureStatistics:
    """Feature statistics of the 10k Fashion-MNIST test images (cached)."""
    if cache.is_file():
        return FeatureStatistics.load(cache)
    images, _ = load_split(locate_fashion_mnist(None, download=False, download_dir=None), "test")
    # Named after the weights' hash: statistics of another classifier are refused, never compared.
    stats = FeatureStatistics(extractor=extractor.identity, metadata={"reference": "fashion_mnist test (10k)"})
    stats.update(extractor(pad_images(images)))
    stats.save(cache)
    return stats


def pad_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 32, 32) in [-1, 1], padded with the background, as the DataModule does."""
    return torch.nn.functional.pad(images.float().div(127.5).sub(1.0)[:, None], (2, 2, 2, 2), value=-1.0)


def load_trained(budget: str, name: str) -> tuple[torch.nn.Module, Any, dict[str, Any], int]:
    """The EMA network of a finished run (through the one loader, ``assembly.load_run``), its sampler,
    config and step."""
    spec = BUDGETS[budget]
    bundle = load_run(run_dir(budget, name) / "checkpoints" / "last.ckpt")
    sampler = DDIMSampler(bundle.diffusion, steps=spec["sampler_steps"], eta=1.0)
    return bundle.network, sampler, bundle.config, bundle.global_step


def evaluate_run(
    budget: str, name: str, preset: str, extractor: FMNISTFeatureExtractor, reference: FeatureStatistics
) -> dict[str, Any]:
    """FD of ``samples`` images made with the EMA weights, plus cost (cached per run and protocol)."""
    spec = BUDGETS[budget]
    net, sampler, config, step = load_trained(budget, name)
    protocol = {"samples": spec["samples"], "sampler_steps": spec["sampler_steps"], "global_step": step}
    cache = run_dir(budget, name) / "reproduce_eval.json"
    if cache.is_file() and json.loads(cache.read_text()).get("protocol") == protocol:
        return json.loads(cache.read_text())["row"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    shape = (net.in_channels, net.image_size, net.image_size)
    generated = FeatureStatistics(extractor=extractor.identity)
    batch, images_kept = 250, None
    for first in range(0, spec["samples"], batch):
        n = min(batch, spec["samples"] - first)
        # One seed per batch start: the same noise for every model, so grids are comparable.
        images = sample(net, sampler, (n, *shape), torch.Generator().manual_seed(first), device).clamp(-1, 1)
        generated.update(extractor(images.cpu()))
        images_kept = images[:64].cpu() if images_kept is None else images_kept
    grid = save_grid(images_kept, ROOT / "docs" / f"results_{budget}_{name}.png", scale=2)
    row = {
        "name": name,
        "label": LABELS[name],
        "preset": preset,
        "params_m": count_params(net) / 1e6,
        "gmacs": count_gmacs(net.cpu(), shape, False),
        "fd_fmnist": generated.frechet_distance(reference),
        "samples": spec["samples"],
        "global_step": step,
        "grid": str(grid.relative_to(ROOT)),
    }
    cache.write_text(json.dumps({"protocol": protocol, "row": row}, indent=2) + "\n")
    return row


def time_sampling(budget: str, name: str, num_samples: int) -> float:
    """Seconds per 1,000 samples with the budget's sampler (batch ``num_samples``, after a warm-up)."""
    net, sampler, _, _ = load_trained(budget, name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    shape = (num_samples, net.in_channels, net.image_size, net.image_size)
    sample(net, sampler, (2, *shape[1:]), torch.Generator().manual_seed(0), device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    sample(net, sampler, shape, torch.Generator().manual_seed(0), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / num_samples * 1000


def data_floor(extractor: FMNISTFeatureExtractor, reference: FeatureStatistics, n: int) -> float:
    """FD of ``n`` real training images against the test set: the best a model can score at this n."""
    images, _ = load_split(locate_fashion_mnist(None, download=False, download_dir=None), "train")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
    stats = FeatureStatistics(extractor=extractor.identity).update(extractor(pad_images(images[pick])))
    return stats.frechet_distance(reference)


def write_figure(budget: str, rows: list[dict[str, Any]], floor: float) -> Path:
    """FD against GMACs (log scale) for every evaluated model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for row in rows:
        marker = {"teacher": "s", "lite": "o", "sd": "*"}.get(row["name"], "x")
        ax.scatter(row["gmacs"], row["fd_fmnist"], marker=marker, s=120 if marker == "*" else 60, label=row["label"])
    ax.axhline(floor, color="grey", linestyle=":", label=f"real train images ({rows[0]['samples']})")
    ax.set_xscale("log")
    ax.set_xlabel("GMACs per forward pass (log scale)")
    ax.set_ylabel("FD (Fashion-MNIST classifier features)")
    ax.set_title(f"Fashion-MNIST, {budget} budget: quality against cost")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = ROOT / "docs" / f"results_{budget}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


#: docs/results.md keeps everything after this line when the tables above it are rewritten.
HAND_WRITTEN_MARKER = "<!-- Below: sections not written by scripts/reproduce.py (kept when it rewrites the tables) -->"


def write_markdown() -> Path:
    """docs/results.md from every docs/results_<budget>.json present."""
    lines = [
        "# Reproduction: teacher vs Lite vs SD on Fashion-MNIST",
        "",
        "Written by `python scripts/reproduce.py --budget BUDGET`. All models of a budget train for the same",
        "number of steps at the same batch size, are sampled with the same DDIM sampler (eta 1) and seeds, and",
        "are scored by the Fréchet distance (FD, lower is better) between the features of the generated",
        "images and of the 10k test images, in the feature space of the offline Fashion-MNIST classifier",
        "(`scripts/train_fid_classifier.py`). This is `fd_fmnist`, not Inception FID; the absolute values",
        "depend on the number of samples, so compare rows of one table only. GMACs: one forward pass,",
        "FlopCounterMode FLOPs / 2. Sampling time: seconds per 1,000 images with the budget's sampler.",
        "",
    ]
    for path in sorted((ROOT / "docs").glob("results_*.json")):
        result = json.loads(path.read_text())
        teacher = next((r for r in result["rows"] if r["name"] == "teacher"), None)
        if teacher is None:
            continue  # a partial evaluation (--runs without the teacher): nothing to compare against
        lines += [f"## Budget: {result['budget']}", "", result["setup"], ""]
        lines += [
            "| model | params (M) | GMACs | teacher GMACs / GMACs | FD | FD / teacher FD | s / 1k samples |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            lines.append(
                f"| {r['label']} | {r['params_m']:.3f} | {r['gmacs']:.4f} | {teacher['gmacs'] / r['gmacs']:.1f}x "
                f"| {r['fd_fmnist']:.2f} | {r['fd_fmnist'] / teacher['fd_fmnist']:.2f}x | {r.get('sampling_s_per_1k', float('nan')):.1f} |"
            )
        lines += [
            "",
            f"Real training images against the test set (the floor at {teacher['samples']} samples): FD "
            f"{result['data_floor']:.2f}.",
            "",
            f"![FD against GMACs]({Path(result['figure']).name})",
            "",
            "Samples (same seeds for every model): "
            + ", ".join(f"[{r['name']}]({Path(r['grid']).name})" for r in result["rows"]),
            "",
        ]
        if result.get("findings"):
            lines += ["### Findings", "", result["findings"], ""]
    out = ROOT / "docs" / "results.md"
    # Sections written by hand (guidance truncation, inpainting) follow the marker: keep them.
    kept = ""
    if out.is_file() and HAND_WRITTEN_MARKER in out.read_text():
        kept = "\n" + HAND_WRITTEN_MARKER + out.read_text().split(HAND_WRITTEN_MARKER, 1)[1]
    out.write_text("\n".join(lines) + kept)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--stage", choices=["all", "train", "eval"], default="all")
    parser.add_argument("--ablations", action="store_true", help="also train and evaluate the ablation runs")
    parser.add_argument("--runs", nargs="+", help="only these runs (e.g. to train two students in parallel)")
    parser.add_argument("--steps", type=int, help="override the budget's training steps")
    parser.add_argument("--samples", type=int, help="override the budget's number of evaluation samples")
    parser.add_argument("--classifier", default=str(ROOT / DEFAULT_WEIGHTS), help="FD feature extractor weights")
    parser.add_argument(
        "--timing-samples", type=int, default=100, help="batch of the sampling-time measurement (0: skip)"
    )
    parser.add_argument("--run-prefix", default="repro", help="run names are <prefix>_<budget>_<model>")
    parser.add_argument("--findings", help="a markdown paragraph to store with the results")
    args = parser.parse_args()
    spec = BUDGETS[args.budget]
    RUN_PREFIX[0] = args.run_prefix
    if args.steps:
        spec["steps"] = args.steps
    if args.samples:
        spec["samples"] = args.samples
    runs = dict(RUNS) | (ABLATIONS if args.ablations else {})
    if args.runs:
        unknown = sorted(set(args.runs) - set(RUNS) - set(ABLATIONS))
        if unknown:
            parser.error(f"unknown runs {unknown}; choose from {sorted(RUNS) + sorted(ABLATIONS)}")
        runs = {name: (RUNS | ABLATIONS)[name] for name in args.runs}

    if args.stage in ("all", "train"):
        for name, (role, loss) in runs.items():  # the teacher first: the distilled runs need it
            train_run(args.budget, name, role, loss, [])
    if args.stage == "train":
        return

    if not Path(args.classifier).is_file():
        print(f"training the FD feature extractor into {args.classifier}", flush=True)
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "train_fid_classifier.py"), f"output={args.classifier}"],
            cwd=ROOT,
            check=True,
        )
    extractor = FMNISTFeatureExtractor(args.classifier)
    reference = reference_statistics(extractor, ROOT / "logs" / "repro_cache" / "fmnist_test_stats.npz")
    rows = []
    for name in runs:
        if not (run_dir(args.budget, name) / "checkpoints" / "last.ckpt").is_file():
            print(f"[{name}] no checkpoint, skipped")
            continue
        row = evaluate_run(args.budget, name, spec["models"][runs[name][0]], extractor, reference)
        if args.timing_samples:
            row["sampling_s_per_1k"] = time_sampling(args.budget, name, args.timing_samples)
        print(json.dumps(row), flush=True)
        rows.append(row)
    floor = data_floor(extractor, reference, spec["samples"])
    figure = write_figure(args.budget, rows, floor)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86_64'})"
    setup = (
        f"{spec['steps']} steps of batch {spec['batch_size']} for every model (AdamW lr 1e-3, 100 warm-up steps, "
        f"EMA 0.995), DDPM linear schedule, pixel space 1x32x32; teacher `{spec['models']['teacher']}`, Lite "
        f"`{spec['models']['lite']}`, SD `{spec['models']['sd']}` (Haar wavelet gates, loss `spectral_distill`: "
        f"lambda_s = lambda_f = 0.1, alpha = -1). Evaluation: {spec['samples']} samples, DDIM "
        f"{spec['sampler_steps']} steps, eta 1, EMA weights, on {device} with {torch.get_num_threads()} threads; "
        f"sampling time measured alone, on a batch of {args.timing_samples}."
    )
    result_path = ROOT / "docs" / f"results_{args.budget}.json"
    previous = json.loads(result_path.read_text()) if result_path.is_file() else {}
    result = {
        "budget": args.budget,
        "setup": setup,
        "rows": rows,
        "data_floor": floor,
        "figure": str(figure.relative_to(ROOT)),
        "findings": args.findings or previous.get("findings", ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "host_cpu_count": os.cpu_count(),
    }
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {result_path}, {figure} and {write_markdown()}")


if __name__ == "__main__":
    main()
