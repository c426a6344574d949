"""Does wall-clock time follow the MACs? Teacher and students, interleaved, on one device.

    python scripts/bench_speed.py [--device auto|cpu|cuda] [--pairs celebahq church] [--students 8x 18x]
        [--batch-size N] [--sample-batches 1 16] [--sample-steps N] [--samplers ddim dpmpp_2m]
        [--guidance-pairs church] [--precision 32|bf16-mixed] [--compile off|whole|regional]
        [--repeats N] [--profile on|off] [--json PATH] [--markdown PATH]

For each pair (a teacher preset and its SD students, see ``scripts/bench_train.py``), in one
process, the models take turns within every repeat, so that a change in the machine's load hits
all of them alike. What is timed, each between two device synchronisations:

- ``train``: one training step of the run's ``DiffusionModule`` (``loss=denoising``) on a batch of
  latent-shaped tensors: forward, loss, backward, gradient clipping, AdamW and the EMA update;
- ``teacher_forward``: the teacher's forward pass under ``no_grad`` at the same batch;
- ``distill``: one step of each student with the spectrum-aware distillation loss
  (``loss=spectral_distill``, decoder features and frequency weights on) against the frozen
  teacher, which runs in the student's layout, without gradients or optimizer state;
- ``sample``: full sampling runs (``evaluation/generation.py``, per-sample counter-based noise on
  the device) with DDIM and DPM-Solver++ 2M, at batch 1 (latency) and at a throughput batch,
  without guidance, and with classifier-free guidance (scale 3) over all steps and truncated after
  half of them, on a class-conditional twin of each preset (``num_classes=10``);
- ``noise``: the share of a sampling run spent drawing its noise (the same run with the network
  replaced by a zero function is the sampling loop's own cost).

Efficiency is the student's speed-up over its teacher divided by the GMACs ratio of the two: 1.0
means the wall-clock time falls exactly as the MACs do. ``--profile on`` adds a cost breakdown of
one training step of each model by op kind (convolution, matmul, attention, norms, elementwise,
wavelet gating, copies, optimizer), from ``torch.profiler``: the self time of every op, forward
ops inside the wavelet-gated layers counted as ``wavelet_gating``.

Results go to ``--json`` (``results[]`` with ``preset``, ``role``, ``kind``, ``images_per_s``,
``gmacs``, ...; ``efficiency[]``; ``breakdown[]``; ``targets[]``) and ``--markdown`` (the tables
of ``docs/benchmarks.md``). ``scripts/bench_gpu.sh`` runs the whole GPU benchmark in one command.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_train import PAIRS, device_name, synchronize  # noqa: E402

CPU_TARGETS = {"train_efficiency": 0.85, "sample_efficiency": 0.85, "distill_overhead": 1.10}
GPU_TARGETS = {
    "sd_celebahq_8x_images_per_s": 2000.0,
    "compiled_efficiency": 0.6,
    "compile_warmup_s": 60.0,
    "truncation_share": 0.9,
    "noise_share": 0.05,
}
GUIDANCE_SCALE = 3.0
OP_KINDS = ("convolution", "matmul", "attention", "norm", "elementwise", "wavelet_gating", "copy", "optimizer", "other")


# -- models ---------------------------------------------------------------------------------------
def student_preset(pair: str, size: str) -> str:
    """The SD student of ``pair`` sized for ``size`` (8x, 18x) fewer GMACs."""
    return f"sd_{pair}_{size}"


@dataclass
class Entry:
    """One preset of a pair, with everything its measurements need."""

    preset: str
    role: str
    pair: str
    module: Any
    optimizer: torch.optim.Optimizer
    ema: list[torch.Tensor]
    gmacs: float
    params_m: float
    conditional: Any = None  # a class-conditional twin, for the guidance runs
    distill: Any = None  # (module, optimizer) with the distillation loss, students only
    teacher: Any = None  # the pair's frozen teacher (Teacher)
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from spectral_diffusion.utils.run import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):  # what a Hydra run sets; the paths.* resolvers read it
        cfg.hydra.runtime.output_dir = str(ROOT / "logs" / "bench_speed")
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def build_module(
    preset: str, diffusion: str, args: argparse.Namespace, extra: list[str] = (), compile_as: str | None = None
) -> Any:
    from spectral_diffusion.training.setup import build_module as build

    cfg = compose(
        [
            f"model={preset}",
            f"diffusion={diffusion}",
            "loss=denoising",
            "autoencoder=identity",
            "module.channels_last=true",
            "logger=none",
            *extra,
        ]
    )
    module = build(cfg).to(args.device)
    from spectral_diffusion.networks.compilation import compile_network

    compile_network(module.net, compile_as or args.compile)
    return module


def make_teacher(teacher_module: Any) -> Any:
    """A frozen copy of the teacher's network as distillation holds it (no grads, eval, channels-last)."""
    from spectral_diffusion.bundles import ModelBundle
    from spectral_diffusion.teachers import Teacher

    net = copy.deepcopy(teacher_module.net)
    bundle = ModelBundle(net, teacher_module.diffusion, None, tuple(teacher_module.sample_shape), source="bench")
    return Teacher(bundle)


def build_entries(pair: str, args: argparse.Namespace) -> list[Entry]:
    from spectral_diffusion.evaluation.cost import count_gmacs, count_params
    from spectral_diffusion.losses import SpectralDistillationLoss
    from spectral_diffusion.networks.compilation import compile_network

    teacher_preset, diffusion = PAIRS[pair]
    presets = [("teacher", teacher_preset, [])] + [("student", student_preset(pair, s), []) for s in args.students]
    for variant in args.variants:  # PRESET:OVERRIDE,OVERRIDE -- a student with changed settings
        preset, _, overrides = variant.partition(":")
        if preset in [p for _, p, _ in presets]:
            presets.append(("student", preset, [f"model.{o}" for o in overrides.split(",") if o]))
    entries = []
    teacher = None
    for role, preset, overrides in presets:
        module = build_module(preset, diffusion, args, overrides, args.teacher_compile if role == "teacher" else None)
        shape = tuple(module.sample_shape)
        gmacs = count_gmacs(module.net, shape, False)
        entry = Entry(
            preset=preset + "".join(f" {o}" for o in overrides),
            role=role,
            pair=pair,
            module=module,
            optimizer=torch.optim.AdamW(module.net.parameters(), lr=1e-4),
            ema=[p.detach().clone() for p in module.net.parameters()],
            gmacs=gmacs,
            params_m=count_params(module.net) / 1e6,
        )
        if pair in args.guidance_pairs:
            entry.conditional = build_module(preset, diffusion, args, [*overrides, "model.num_classes=10"]).net.eval()
        if role == "teacher":
            teacher = make_teacher(module)
            if args.device != "cpu" and args.precision == "bf16-mixed":
                teacher.net.to(torch.bfloat16)
            compile_network(teacher.net, args.teacher_compile)
        else:
            student = build_module(preset, diffusion, args, overrides)
            student.loss = SpectralDistillationLoss(student.diffusion, teacher, student.net).to(args.device)
            params = list(student.net.parameters()) + list(student.loss.parameters())
            entry.distill = (student, torch.optim.AdamW(params, lr=1e-4))
        entry.teacher = teacher
        entries.append(entry)
    return entries


# -- the timed jobs -------------------------------------------------------------------------------
def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if args.precision == "bf16-mixed":
        return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_for(module: Any, batch_size: int, device: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, *module.sample_shape)
    return torch.randn(shape, generator=generator).to(device).contiguous(memory_format=torch.channels_last)


def train_step(module: Any, optimizer: torch.optim.Optimizer, ema: list[torch.Tensor] | None, x0, args) -> None:
    """What a run's optimizer step does: loss, backward, clip to 1, AdamW, EMA (decay 0.9999)."""
    module.train()
    generator = torch.Generator().manual_seed(1)
    with autocast(args):
        loss = module._compute_loss((x0, None), generator)["loss"]
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        torch._foreach_lerp_(ema, [p.detach() for p in module.net.parameters()], 1 - 0.9999)


def timed(fn: Callable[[], Any], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def sample_run(network, diffusion, shape, batch: int, sampler_name: str, steps: int, device: str, guidance=None):
    """One full sampling run of ``batch`` samples (no decoder: latents are what the UNet costs)."""
    from spectral_diffusion.bundles import ModelBundle
    from spectral_diffusion.diffusion.samplers import DDIMSampler, DPMSolverPlusPlusSampler
    from spectral_diffusion.evaluation.generation import generate

    sampler = (DDIMSampler if sampler_name == "ddim" else DPMSolverPlusPlusSampler)(diffusion, steps=steps)
    num_classes = getattr(network, "num_classes", None)
    bundle = ModelBundle(network, diffusion, None, shape, num_classes=num_classes)
    for _ in generate(bundle, sampler, range(batch), 0, batch, device, guidance, decode=False):
        pass


def jobs_for(entry: Entry, args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """The named measurements of one entry, each a function that runs once."""
    from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance

    module = entry.module
    shape = tuple(module.sample_shape)
    x0 = batch_for(module, args.batch_size, args.device)
    jobs: dict[str, Callable[[], Any]] = {"train": lambda: train_step(module, entry.optimizer, entry.ema, x0, args)}
    if entry.role == "teacher":

        def teacher_forward() -> None:
            t = torch.randint(0, 1000, (x0.shape[0],), device=args.device)
            with torch.no_grad(), autocast(args):
                entry.teacher(x0, t)

        jobs["teacher_forward"] = teacher_forward
    if entry.distill is not None:
        student, optimizer = entry.distill
        jobs["distill"] = lambda: train_step(student, optimizer, None, x0, args)
    network = module.net
    for sampler_name in args.samplers:
        for batch in args.sample_batches:

            def run(batch=batch, sampler_name=sampler_name) -> None:
                network.eval()
                with autocast(args):
                    sample_run(network, module.diffusion, shape, batch, sampler_name, args.sample_steps, args.device)

            jobs[f"sample/{sampler_name}/b{batch}"] = run
    if entry.conditional is not None:
        batch = max(args.sample_batches)
        for label, after in (("cfg", 1.0), ("cfg_half", 0.5)):
            guidance = ClassifierFreeGuidance(scale=GUIDANCE_SCALE, truncate_after=after)

            def guided(guidance=guidance, batch=batch) -> None:
                with autocast(args):
                    sample_run(
                        entry.conditional,
                        module.diffusion,
                        shape,
                        batch,
                        "ddim",
                        args.sample_steps,
                        args.device,
                        guidance,
                    )

            jobs[f"sample/ddim/b{batch}/{label}"] = guided
    batch = max(args.sample_batches)
    zero = ZeroNetwork()
    jobs[f"sampling_loop/ddim/b{batch}"] = lambda: sample_run(
        zero, module.diffusion, shape, batch, "ddim", args.sample_steps, args.device
    )
    return jobs


class ZeroNetwork(torch.nn.Module):
    """A network that costs nothing: what is left of a sampling run is the loop, the noise and the updates."""

    num_classes = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels=None) -> torch.Tensor:
        return torch.zeros_like(x)


# -- the op breakdown -----------------------------------------------------------------------------
def op_kind(name: str) -> str:
    n = name.lower()
    # AdamW's per-parameter update (sqrt, addcdiv) and the EMA's lerp are the optimizer step's
    if any(k in n for k in ("optimizer", "adamw", "_foreach", "clip_grad", "lerp", "sqrt", "addcdiv")):
        return "optimizer"
    if "conv" in n and "convert" not in n:
        return "convolution"
    if any(k in n for k in ("attention", "softmax", "sdpa", "flash")):
        return "attention"
    if any(k in n for k in ("addmm", "::mm", "bmm", "matmul", "linear", "einsum", "baddbmm")):
        return "matmul"
    if "norm" in n:
        return "norm"
    if any(k in n for k in ("copy", "contiguous", "clone", "::cat", "_to_copy", "pixel_shuffle", "index")):
        return "copy"
    if any(
        k in n
        for k in ("add", "mul", "silu", "sigmoid", "sub", "div", "pow", "mean", "sum", "exp", "neg", "where", "fill")
    ):
        return "elementwise"
    return "other"


def breakdown(entry: Entry, args: argparse.Namespace) -> dict[str, Any]:
    """Self time of one training step's ops, by kind, in ms and as shares."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from spectral_diffusion.networks.wavelet_gating import WaveletGatedDownsample, WaveletGatedUpsample

    module = entry.module
    x0 = batch_for(module, args.batch_size, args.device)
    handles = []
    ranges: list[Any] = []
    for layer in module.net.modules():
        if isinstance(layer, WaveletGatedDownsample | WaveletGatedUpsample):

            def enter(*_: Any) -> None:
                ranges.append(record_function("wavelet_gating"))
                ranges[-1].__enter__()

            def leave(*_: Any) -> None:
                ranges.pop().__exit__(None, None, None)

            handles += [layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    train_step(module, entry.optimizer, entry.ema, x0, args)  # warm
    with profile(activities=activities) as prof:
        train_step(module, entry.optimizer, entry.ema, x0, args)
        synchronize(args.device)
    for h in handles:
        h.remove()
    gpu = args.device.startswith("cuda")
    totals: dict[str, float] = defaultdict(float)
    others: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name == "wavelet_gating" or event.name.startswith("ProfilerStep"):
            continue
        self_us = (
            getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0))
            if gpu
            else event.self_cpu_time_total
        )
        if not self_us:
            continue
        kind = op_kind(event.name)
        parent = event.cpu_parent
        while parent is not None:
            if parent.name == "wavelet_gating":
                kind = "wavelet_gating"
                break
            parent = parent.cpu_parent
        totals[kind] += self_us / 1000
        if kind == "other":
            others[event.name] += self_us / 1000
    whole = sum(totals.values()) or 1.0
    return {
        "preset": entry.preset,
        "role": entry.role,
        "pair": entry.pair,
        "time": "device" if gpu else "cpu",
        "total_ms": whole,
        "ms": {k: totals.get(k, 0.0) for k in OP_KINDS},
        "share": {k: totals.get(k, 0.0) / whole for k in OP_KINDS},
        "other_ops_ms": dict(sorted(others.items(), key=lambda kv: -kv[1])[:8]),
    }


# -- the run --------------------------------------------------------------------------------------
def batch_of(kind: str, args: argparse.Namespace) -> int:
    if kind.startswith(("sample", "sampling_loop")):
        return int(kind.split("/")[2][1:])
    return args.batch_size


def summarise(entries: list[Entry], args: argparse.Namespace, compile_s: dict[str, float]) -> list[dict[str, Any]]:
    results = []
    for e in entries:
        for kind, times in e.times.items():
            seconds = statistics.median(times)
            batch = batch_of(kind, args)
            results.append(
                {
                    "preset": e.preset,
                    "role": e.role,
                    "pair": e.pair,
                    "kind": kind,
                    "batch_size": batch,
                    "sample_steps": args.sample_steps if kind.startswith(("sample", "sampling_loop")) else None,
                    "seconds": seconds,
                    "seconds_all": times,
                    "images_per_s": batch / seconds,
                    "gmacs": e.gmacs,
                    "params_m": e.params_m,
                    "compile_warmup_s": compile_s.get(e.preset),
                }
            )
    return results


def efficiencies(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    teachers = {(r["pair"], r["kind"]): r for r in results if r["role"] == "teacher"}
    out = []
    for r in results:
        # The distillation step has its own target (against the student's step + a teacher forward)
        teacher = teachers.get((r["pair"], r["kind"]))
        if r["role"] != "student" or teacher is None or r["kind"].startswith(("sampling_loop", "distill")):
            continue
        speedup = r["images_per_s"] / teacher["images_per_s"]
        ratio = teacher["gmacs"] / r["gmacs"]
        out.append(
            {
                "pair": r["pair"],
                "student": r["preset"],
                "teacher": teacher["preset"],
                "kind": r["kind"],
                "batch_size": r["batch_size"],
                "speedup": speedup,
                "gmacs_ratio": ratio,
                "efficiency": speedup / ratio,
            }
        )
    return out


def check_targets(results: list[dict[str, Any]], effs: list[dict[str, Any]], args) -> list[dict[str, Any]]:
    """Each target of issue 15 against its measured figure, where this run measured it."""
    by = {(r["preset"], r["kind"]): r for r in results}
    targets = []
    gpu = args.device.startswith("cuda")
    throughput_batch = max(args.sample_batches)
    for e in effs:  # the targets are for the 8x students; every student is reported
        if e["kind"] == "train":
            targets.append(
                {
                    "target": f"training efficiency of {e['student']} >= {CPU_TARGETS['train_efficiency']}",
                    "measured": e["efficiency"],
                    "met": e["efficiency"] >= CPU_TARGETS["train_efficiency"],
                }
            )
        if e["kind"].startswith("sample/") and e["kind"].endswith(f"/b{throughput_batch}"):
            targets.append(
                {
                    "target": f"sampling efficiency of {e['student']} ({e['kind']}) >= {CPU_TARGETS['sample_efficiency']}",
                    "measured": e["efficiency"],
                    "met": e["efficiency"] >= CPU_TARGETS["sample_efficiency"],
                }
            )
    for r in results:
        if r["kind"] != "distill":
            continue
        teacher_preset = PAIRS[r["pair"]][0]
        budget = by[(r["preset"], "train")]["seconds"] + by[(teacher_preset, "teacher_forward")]["seconds"]
        ratio = r["seconds"] / budget
        targets.append(
            {
                "target": f"distillation step of {r['preset']} <= (its training step + teacher forward) x 1.10",
                "measured": ratio,
                "met": ratio <= CPU_TARGETS["distill_overhead"],
            }
        )
    for (preset, kind), r in by.items():
        if kind == f"sample/ddim/b{throughput_batch}/cfg_half":
            full = by[(preset, f"sample/ddim/b{throughput_batch}/cfg")]
            promised = 2.0 / 1.5  # 2 calls per step, against 2 for the first half and 1 after
            share = (full["seconds"] / r["seconds"]) / promised
            targets.append(
                {
                    "target": f"{preset}: guidance truncation at 0.5 gives >= 0.9 of the promised 1.33x",
                    "measured": share,
                    "met": share >= GPU_TARGETS["truncation_share"],
                }
            )
        if kind.startswith("sampling_loop"):
            run = by.get((preset, kind.replace("sampling_loop", "sample")))
            if run is not None:
                share = r["seconds"] / run["seconds"]
                targets.append(
                    {
                        "target": f"{preset}: the sampling loop and its noise < 5% of sampling time",
                        "measured": share,
                        "met": share < GPU_TARGETS["noise_share"],
                    }
                )
    if gpu:
        r = by.get(("sd_celebahq_8x", "train"))
        if r is not None:
            target = GPU_TARGETS["sd_celebahq_8x_images_per_s"]
            targets.append(
                {
                    "target": f"sd_celebahq_8x trains at >= {target:.0f} images/s",
                    "measured": r["images_per_s"],
                    "met": r["images_per_s"] >= target,
                }
            )
        for r in results:
            if r["compile_warmup_s"] is not None and r["kind"] == "train":
                targets.append(
                    {
                        "target": f"{r['preset']}: compile warm-up <= 60 s",
                        "measured": r["compile_warmup_s"],
                        "met": r["compile_warmup_s"] <= GPU_TARGETS["compile_warmup_s"],
                    }
                )
    return targets


def markdown(results, effs, breakdowns, targets, header: str) -> str:
    lines = [header, ""]
    lines += ["| preset | role | measurement | batch | ms | images/s | GMACs/img |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['preset']} | {r['role']} | {r['kind']} | {r['batch_size']} | {1000 * r['seconds']:.1f} | "
            f"{r['images_per_s']:.2f} | {r['gmacs']:.2f} |"
        )
    if effs:
        lines += [
            "",
            "| student / teacher | measurement | batch | GMACs ratio | speed-up | efficiency |",
            "|---|---|---|---|---|---|",
        ]
        for e in effs:
            lines.append(
                f"| {e['student']} / {e['teacher']} | {e['kind']} | {e['batch_size']} | {e['gmacs_ratio']:.1f}x | "
                f"{e['speedup']:.2f}x | {e['efficiency']:.2f} |"
            )
    if breakdowns:
        lines += [
            "",
            "| preset | step ms (profiled) | " + " | ".join(OP_KINDS) + " |",
            "|---|---|" + "---|" * len(OP_KINDS),
        ]
        for b in breakdowns:
            shares = " | ".join(f"{100 * b['share'][k]:.1f}%" for k in OP_KINDS)
            lines.append(f"| {b['preset']} | {b['total_ms']:.0f} | {shares} |")
    if targets:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for t in targets:
            lines.append(f"| {t['target']} | {t['measured']:.3g} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def report_from_json(path: Path, markdown_path: Path | None) -> int:
    """The tables of a finished run, recomputed from its JSON (efficiencies and targets included)."""
    summary = json.loads(path.read_text())
    settings = argparse.Namespace(**summary["settings"])
    effs = efficiencies(summary["results"])
    targets = check_targets(summary["results"], effs, settings)
    table = markdown(summary["results"], effs, summary["breakdown"], targets, summary["header"])
    print(table, end="")
    if markdown_path:
        markdown_path.write_text(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--students", nargs="+", choices=["8x", "18x"], default=["8x", "18x"])
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: 2 CPU, 128 GPU)")
    parser.add_argument("--sample-batches", type=int, nargs="+", default=None, help="default: 1 16 CPU, 1 256 GPU")
    parser.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: 2 CPU, 50 GPU)")
    parser.add_argument("--samplers", nargs="+", choices=["ddim", "dpmpp_2m"], default=["ddim", "dpmpp_2m"])
    parser.add_argument(
        "--guidance-pairs", nargs="*", default=None, help="pairs with guided runs (default: all GPU, church CPU)"
    )
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default=None)
    parser.add_argument("--compile", choices=["off", "whole", "regional"], default="off")
    parser.add_argument("--teacher-compile", choices=["off", "whole", "regional"], default=None,
                        help="the teacher's compilation (default: as --compile)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--profile", choices=["on", "off"], default="on")
    parser.add_argument("--variants", nargs="*", default=[],
                        help="extra students PRESET:KEY=VALUE[,KEY=VALUE] of the model config, e.g. "
                        "sd_church_8x:num_heads=null,head_channels=32")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: rebuild the tables of an earlier run's --json file")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.from_json:
        return report_from_json(args.from_json, args.markdown)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    args.batch_size = args.batch_size or (128 if gpu else 2)
    args.sample_batches = args.sample_batches or ([1, 256] if gpu else [1, 16])
    args.sample_steps = args.sample_steps or (50 if gpu else 2)
    args.precision = args.precision or ("bf16-mixed" if gpu else "32")
    if args.guidance_pairs is None:
        args.guidance_pairs = list(args.pairs) if gpu else ["church"]
    args.teacher_compile = args.teacher_compile or args.compile
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore", category=UserWarning)

    all_results, all_breakdowns = [], []
    load = [os.getloadavg()[0]]
    for pair in args.pairs:
        print(f"[{pair}] building the teacher and its students ...", file=sys.stderr)
        entries = build_entries(pair, args)
        jobs = {e.preset: jobs_for(e, args) for e in entries}
        compile_s: dict[str, float] = {}
        for e in entries:  # warm-up rounds: compilation, autotuning, allocator
            start = time.perf_counter()
            for _ in range(args.warmup):
                for job in jobs[e.preset].values():
                    timed(job, args.device)
            if (args.teacher_compile if e.role == "teacher" else args.compile) != "off":
                compile_s[e.preset] = time.perf_counter() - start
        for repeat in range(args.repeats):
            for e in entries:
                for name, job in jobs[e.preset].items():
                    e.times[name].append(timed(job, args.device))
            load.append(os.getloadavg()[0])
            print(f"[{pair}] repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
        all_results += summarise(entries, args, compile_s)
        if args.profile == "on":
            all_breakdowns += [breakdown(e, args) for e in entries]
        del entries, jobs
        if args.json:  # after every pair: a run cut short keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"results": all_results, "breakdown": all_breakdowns}, indent=2) + "\n")
    effs = efficiencies(all_results)
    targets = check_targets(all_results, effs, args)
    header = (
        f"Device: {device_name(args.device)}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
        f"precision {args.precision}; compile {args.compile} (teacher {args.teacher_compile}); training batch {args.batch_size}; "
        f"{args.sample_steps} sampler steps; median of {args.repeats} interleaved repeats"
    )
    if not gpu:
        header += f"; 1-min load average {min(load):.1f}-{max(load):.1f}"
    table = markdown(all_results, effs, all_breakdowns, targets, header)
    print(table, end="")
    summary = {
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "header": header,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average": load,
        "results": all_results,
        "efficiency": effs,
        "breakdown": all_breakdowns,
        "targets": targets,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
