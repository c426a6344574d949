"""Training throughput (images/s) and peak memory of teacher presets and their SD students.

    python scripts/bench_train.py [--pairs celebahq church] [--device auto|cpu|cuda] [--batch-size N]
        [--precision 32|bf16-mixed|both] [--compile on|off|both] [--channels-last on|off]
        [--steps N] [--warmup N] [--json PATH] [--markdown PATH]

What is timed is the real training step of a run from cached latents: Lightning's ``Trainer.fit``
on the ``DiffusionModule`` that ``build_module`` makes of the preset (``loss=denoising``), i.e.
the forward pass and loss, backward, gradient clipping, the AdamW step, the LR schedule and the
EMA update (``--compile on`` is the run's ``module.compile_network=true``), on batches of
latent-shaped tensors held in memory (as the memory-mapped latent store delivers them), so no
autoencoder runs. Each preset is trained at its real latent shape:

- ``celebahq``: ``ldm_celebahq`` (the CompVis LDM-4 teacher) and ``sd_celebahq_{8x,18x}``, 3x64x64;
- ``church``: ``ldm_church`` (LDM-8) and ``sd_church_{8x,18x}``, 4x32x32.

(``8x`` and ``18x`` name the GMACs reduction the student was sized for, see docs/models.md.)

``--warmup`` steps run first (cuDNN autotuning, the allocator, and torch.compile's compilation),
then ``--steps`` steps are timed between two device synchronisations. Each measurement runs in a
fresh process, so that peak memory is its own: ``torch.cuda.max_memory_allocated`` on a GPU, the
peak resident set size (``getrusage``, which includes the ~0.5 GB of the Python process with torch)
on the CPU. Targets of issue 7: the SD student at least 10x faster than its teacher; on one H100
the CelebA-HQ SD student at least 2,000 images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"

#: pair name -> (teacher preset, diffusion config); its students are sd_<pair>_<8x|18x>.
PAIRS: dict[str, tuple[str, str]] = {
    "celebahq": ("ldm_celebahq", "ldm_scaled_linear"),
    "church": ("ldm_church", "ldm_church"),
}
STUDENTS = ("8x", "18x")
#: The issue's absolute target: this student, on one H100, at least this many images/s.
H100_TARGET = ("sd_celebahq_8x", 2000.0)
SPEEDUP_TARGET = 10.0


@dataclass(frozen=True)
class Setting:
    """One measurement: a preset trained under one combination of the switches."""

    preset: str
    role: str  # teacher | student
    pair: str
    diffusion: str
    device: str
    precision: str  # 32 | bf16-mixed
    compile: bool
    channels_last: bool
    batch_size: int
    steps: int
    warmup: int
    tf32: bool = True
    ema: bool = True
    threads: int | None = None


def device_name(device: str) -> str:
    """A readable name of the device, for the table: the GPU's name or the CPU's model."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def build(setting: Setting) -> Any:
    """The run's ``DiffusionModule``, built by ``build_module`` from the composed train config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from spectral_diffusion.training.setup import build_module
    from spectral_diffusion.utils.run import register_resolvers

    register_resolvers()
    overrides = [
        f"model={setting.preset}",
        f"diffusion={setting.diffusion}",
        "loss=denoising",
        "autoencoder=identity",
        f"module.channels_last={str(setting.channels_last).lower()}",
        f"module.compile_network={str(setting.compile).lower()}",  # net.compile() in place, as a run does
        "logger=none",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):  # what a Hydra run would set: the resolvers of paths.* read it
        cfg.hydra.runtime.output_dir = str(ROOT / "logs" / "bench_train")
        cfg.hydra.runtime.cwd = str(ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return build_module(cfg)


class LatentBatches(torch.utils.data.Dataset):
    """``n`` random latents of one shape, in memory: what the cached-latent loader yields."""

    def __init__(self, shape: tuple[int, int, int], n: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.latents = torch.randn(n, *shape, generator=generator)
        self.labels = torch.zeros(n, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latents[index], self.labels[index]


def step_timer(warmup: int, steps: int, device: str) -> Any:
    """A callback that reads the clock after ``warmup`` optimizer steps and after ``steps`` more."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.end: float | None = None
            self.load_start = os.getloadavg()[0]

        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            if self.start is None and trainer.global_step == warmup:
                synchronize(device)
                self.load_start = os.getloadavg()[0]
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            if self.end is None and trainer.global_step == warmup + steps:
                synchronize(device)
                self.end = time.perf_counter()

    return StepTimer()


def measure(setting: Setting) -> dict[str, Any]:
    """Train ``warmup + steps`` optimizer steps of ``setting`` and time the last ``steps``."""
    import lightning as L

    from spectral_diffusion.evaluation.cost import count_gmacs, count_params

    if setting.threads:
        torch.set_num_threads(setting.threads)
    if setting.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = setting.tf32
        torch.backends.cudnn.allow_tf32 = setting.tf32
        torch.cuda.reset_peak_memory_stats(torch.device(setting.device))
    module = build(setting)
    shape = module.sample_shape
    gmacs = count_gmacs(module.net, shape, module.class_conditional)
    params = count_params(module.net)

    loader = torch.utils.data.DataLoader(
        LatentBatches(shape, setting.batch_size * 4),
        batch_size=setting.batch_size,
        shuffle=True,
        drop_last=True,  # every step the same batch size: no recompilation, comparable steps
        pin_memory=setting.device.startswith("cuda"),
    )
    callbacks = [step_timer(setting.warmup, setting.steps, setting.device)]
    if setting.ema:
        from spectral_diffusion.training import EMA

        callbacks.append(EMA(decay=0.9999))
    accelerator, _, index = setting.device.partition(":")
    trainer = L.Trainer(
        accelerator="gpu" if accelerator == "cuda" else accelerator,
        devices=[int(index)] if index else 1,
        precision=setting.precision,
        max_steps=setting.warmup + setting.steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        benchmark=setting.device.startswith("cuda"),  # fixed shapes: let cuDNN pick its kernels
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")  # none on purpose
        trainer.fit(module, train_dataloaders=loader)
    timer = callbacks[0]
    if timer.start is None or timer.end is None or trainer.global_step != setting.warmup + setting.steps:
        raise RuntimeError(f"{setting.preset}: training stopped at step {trainer.global_step}, before the timed window")
    seconds = timer.end - timer.start
    if setting.device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated(torch.device(setting.device)) / 2**20
        memory_kind = "max_memory_allocated"
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        memory_kind = "peak RSS"
    return asdict(setting) | {
        "device_name": device_name(setting.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": "x".join(map(str, shape)),
        "params_m": params / 1e6,
        "gmacs": gmacs,
        "global_step": trainer.global_step,
        "seconds": seconds,
        "ms_per_step": 1000 * seconds / setting.steps,
        "images_per_s": setting.batch_size * setting.steps / seconds,
        "peak_memory_mib": peak_mib,
        "memory_kind": memory_kind,
        "load_average": [timer.load_start, os.getloadavg()[0]],
    }


def measure_isolated(setting: Setting) -> dict[str, Any]:
    """:func:`measure` in a fresh process: its own peak memory, its own compile caches."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, setting).result()


def settings_for(args: argparse.Namespace) -> list[Setting]:
    precisions = ["32", "bf16-mixed"] if args.precision == "both" else [args.precision]
    compiles = [False, True] if args.compile == "both" else [args.compile == "on"]
    out = []
    for pair in args.pairs:
        teacher, diffusion = PAIRS[pair]
        presets = [("teacher", teacher)] * ("teacher" in args.roles)
        presets += [("student", f"sd_{pair}_{size}") for size in args.students] * ("student" in args.roles)
        for precision in precisions:
            for compiled in compiles:
                for role, preset in presets:
                    out.append(
                        Setting(
                            preset=preset,
                            role=role,
                            pair=pair,
                            diffusion=diffusion,
                            device=args.device,
                            precision=precision,
                            compile=compiled,
                            channels_last=args.channels_last == "on",
                            batch_size=args.batch_size,
                            steps=args.steps,
                            warmup=args.warmup,
                            tf32=args.tf32 == "on",
                            ema=args.ema == "on",
                            threads=args.threads,
                        )
                    )
    return out


def speedups(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Student over teacher images/s, for each pair measured under the same switches."""
    key = lambda r: (r["pair"], r["precision"], r["compile"], r["channels_last"], r["batch_size"])
    teachers = {key(r): r for r in results if r["role"] == "teacher"}
    out = []
    for r in results:
        teacher = teachers.get(key(r))
        if r["role"] == "student" and teacher is not None:
            ratio = r["images_per_s"] / teacher["images_per_s"]
            out.append(
                {
                    "pair": r["pair"],
                    "student": r["preset"],
                    "teacher": teacher["preset"],
                    "precision": r["precision"],
                    "compile": r["compile"],
                    "speedup": ratio,
                    "gmacs_ratio": teacher["gmacs"] / r["gmacs"],
                    "meets_10x": ratio >= SPEEDUP_TARGET,
                }
            )
    return out


def h100_check(results: list[dict[str, Any]]) -> list[str]:
    """Lines on the 2,000 images/s target, for measurements on an H100."""
    preset, target = H100_TARGET
    lines = []
    for r in results:
        if r["preset"] == preset and "H100" in r["device_name"]:
            verdict = "meets" if r["images_per_s"] >= target else "misses"
            lines.append(
                f"{preset} on {r['device_name']} ({r['precision']}, compile {'on' if r['compile'] else 'off'}, "
                f"batch {r['batch_size']}): {r['images_per_s']:.0f} images/s, {verdict} the {target:.0f} images/s target"
            )
    return lines


def markdown(results: list[dict[str, Any]]) -> str:
    """The results table, the student/teacher speed-ups, and the H100 check."""
    header = (
        "| preset | role | latent | params (M) | GMACs/img | precision | compile | channels-last | batch | "
        "ms/step | images/s | peak memory (MiB) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        lines.append(
            f"| {r['preset']} | {r['role']} | {r['shape']} | {r['params_m']:.2f} | {r['gmacs']:.2f} | "
            f"{r['precision']} | {'on' if r['compile'] else 'off'} | {'on' if r['channels_last'] else 'off'} | "
            f"{r['batch_size']} | {r['ms_per_step']:.1f} | {r['images_per_s']:.2f} | "
            f"{r['peak_memory_mib']:.0f} ({r['memory_kind']}) |"
        )
    ratios = speedups(results)
    if ratios:
        lines += [
            "",
            "| student / teacher | precision | compile | GMACs ratio | training speed-up | >= 10x |",
            "|---|---|---|---|---|---|",
        ]
        for s in ratios:
            lines.append(
                f"| {s['student']} / {s['teacher']} | {s['precision']} | {'on' if s['compile'] else 'off'} | "
                f"{s['gmacs_ratio']:.1f}x | {s['speedup']:.1f}x | {'yes' if s['meets_10x'] else 'no'} |"
            )
    checks = h100_check(results)
    if checks:
        lines += [""] + [f"- {line}" for line in checks]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS))
    parser.add_argument("--roles", nargs="+", choices=["teacher", "student"], default=["teacher", "student"],
                        help="measure the teachers, the students or both")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="per step (default: 64 on a GPU, 2 on the CPU)")
    parser.add_argument("--precision", choices=["32", "bf16-mixed", "both"], default=None,
                        help="default: bf16-mixed on a GPU, 32 on the CPU")  # fmt: skip
    parser.add_argument("--compile", choices=["on", "off", "both"], default=None,
                        help="torch.compile the network (default: both on a GPU, off on the CPU)")  # fmt: skip
    parser.add_argument("--channels-last", choices=["on", "off"], default="on")
    parser.add_argument("--tf32", choices=["on", "off"], default="on", help="TF32 matmuls and convolutions (GPU)")
    parser.add_argument("--ema", choices=["on", "off"], default="on", help="the EMA callback of a real run")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on a GPU, 3 on the CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 10 GPU, 1 CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (peak RSS accumulates)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (64 if gpu else 2)
    args.precision = args.precision or ("bf16-mixed" if gpu else "32")
    args.compile = args.compile or ("both" if gpu else "off")
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--batch-size and --steps must be at least 1, --warmup at least 0")

    results = []
    for setting in settings_for(args):
        print(f"measuring {setting.preset} ({setting.precision}, compile {setting.compile}) ...", file=sys.stderr)
        result = measure(setting) if args.in_process else measure_isolated(setting)
        print(f"  {result['images_per_s']:.2f} images/s, {result['peak_memory_mib']:.0f} MiB", file=sys.stderr)
        results.append(result)
        if args.json:  # after every measurement: a run cut short keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
    table = markdown(results)
    device = results[0]["device_name"]
    loads = [x for r in results for x in r["load_average"]]
    header = f"Device: {device}; torch {torch.__version__}; {results[0]['threads']} threads"
    if not gpu:
        header += f"; 1-min load average {min(loads):.1f}-{max(loads):.1f} during the runs"
    print(header + "\n\n" + table, end="")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {"results": results, "speedups": speedups(results), "h100": h100_check(results)}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(header + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
