"""ONNX Runtime against torch eager on the CPU: the teacher and its students, batch 1 and 16.

    python scripts/bench_onnx.py [--models teacher sd_8x sd_18x] [--batches 1 16] [--steps 50]
        [--repeats 5] [--json PATH] [--markdown PATH]

Each model is the Fashion-MNIST preset of the cpu_short study (``scripts/reproduce.py``: the teacher
``fmnist_small``, the SD students ``fmnist_sd`` at 8x and 18x fewer GMACs), with random weights
(speed does not depend on them; every layer random, so the parity column compares real outputs), exported by ``spectral_diffusion/export/onnx_export.py`` exactly
as ``scripts/export.py format=onnx`` exports it. Timed in one process, one engine after
the other (interleaving them slowed torch down: ONNX Runtime's threads spin-wait after each run):

- ``latency``: one denoiser call (median over ``--repeats`` x 5 calls after two warm-up calls);
- ``samples/s``: a whole DDIM run of ``--steps`` steps, eta 1 (``diffusion/samplers.py: sample`` for
  torch; ``deploy/onnx_sampler.py: ddim_sample_latents`` over ONNX Runtime, numpy only), the batch
  divided by the median run time.

Both use every core: torch its default intra-op threads, ONNX Runtime its default session options.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spectral_diffusion.assembly import build_diffusion, build_network
from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.deploy import onnx_sampler
from spectral_diffusion.diffusion import DDIMSampler, sample
from spectral_diffusion.evaluation import count_gmacs
from spectral_diffusion.export import export_onnx

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
#: name -> (model preset, overrides): the cpu_short study's teacher and SD students (scripts/reproduce.py).
MODELS = {
    "teacher": ("fmnist_small", []),
    "sd_8x": ("fmnist_sd", ["model.base_channels=12", "++model.num_heads=2"]),
    "sd_18x": ("fmnist_sd", ["model.base_channels=8", "++model.num_heads=2"]),
}


def build_bundle(name: str) -> ModelBundle:
    preset, overrides = MODELS[name]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("train", overrides=[f"model={preset}", "diffusion=linear_v", *overrides])
    torch.manual_seed(0)
    network = build_network(cfg.model).eval()
    with torch.no_grad():  # random weights everywhere: a fresh UNet's zero output layer would make parity trivial
        for param in network.parameters():
            param.normal_(0.0, 0.2)
    return ModelBundle(
        network=network,
        diffusion=build_diffusion(cfg.diffusion),
        first_stage=None,
        shape=(network.in_channels, network.image_size, network.image_size),
        source=f"preset:{name}",
        config={"model": OmegaConf.to_container(cfg.model, resolve=True)},
    ).freeze()


def median_seconds(run, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def bench_model(name: str, batches: list[int], steps: int, repeats: int, folder: Path) -> list[dict]:
    bundle = build_bundle(name)
    sampler = DDIMSampler(bundle.diffusion, steps=steps, eta=1.0, clip_sample=True)
    output, parity = export_onnx(bundle, sampler, folder / name)
    model = onnx_sampler.OnnxDiffusionModel(output)
    gmacs = count_gmacs(bundle.network, bundle.shape)
    rows = []
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn((batch, *bundle.shape), generator=gen)
        t = torch.full((batch,), 500, dtype=torch.long)
        x_np, t_np = x.numpy(), t.numpy()

        def torch_call(x=x, t=t):
            with torch.no_grad():
                bundle.network(x, t)

        def onnx_call(x_np=x_np, t_np=t_np):
            model.denoise(x_np, t_np, None)

        def torch_run(batch=batch):
            sample(bundle.network, sampler, (batch, *bundle.shape), torch.Generator().manual_seed(0))

        def onnx_run(batch=batch):
            draw = onnx_sampler.per_sample_draws(0, list(range(batch)))
            onnx_sampler.ddim_sample_latents(model, draw((batch, *bundle.shape)), None, steps, 1.0, draw)

        latency: dict[str, list[float]] = {}
        runs: dict[str, list[float]] = {}
        # One engine after the other, not interleaved: ONNX Runtime's worker threads spin-wait after each
        # run (its default), which took CPU from torch calls made right after them and halved torch's speed.
        for engine, call, run in (("torch", torch_call, torch_run), ("onnx", onnx_call, onnx_run)):
            call(), call()  # warm-up
            latency[engine] = [median_seconds(call, 5) for _ in range(repeats)]
            runs[engine] = [median_seconds(run, 1) for _ in range(repeats)]
            time.sleep(1.0)
        row = {"model": name, "gmacs": gmacs, "batch": batch, "steps": steps, **parity}
        for engine in ("torch", "onnx"):
            row[f"{engine}_latency_ms"] = 1e3 * statistics.median(latency[engine])
            row[f"{engine}_samples_per_s"] = batch / statistics.median(runs[engine])
        rows.append(row)
        print(
            f"{name:8s} batch {batch:3d}: latency torch {row['torch_latency_ms']:.2f} ms, onnxruntime "
            f"{row['onnx_latency_ms']:.2f} ms; DDIM {steps} samples/s torch {row['torch_samples_per_s']:.2f}, "
            f"onnxruntime {row['onnx_samples_per_s']:.2f}",
            flush=True,
        )
    return rows


def machine() -> str:
    cpu = platform.processor() or "CPU"
    try:
        model = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = model[0].split(":", 1)[1].strip() if model else cpu
    except OSError:
        pass
    import onnxruntime

    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}"
    )


def markdown(rows: list[dict], description: str) -> str:
    lines = [
        f"Machine: {description}. DDIM eta 1, {rows[0]['steps']} steps; latency: one denoiser call (median).",
        "",
        "| model | GMACs | batch | torch latency (ms) | ONNX Runtime latency (ms) | speed-up | torch samples/s "
        "| ONNX Runtime samples/s | speed-up | ORT vs torch max abs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['gmacs']:.4f} | {r['batch']} | {r['torch_latency_ms']:.2f} | {r['onnx_latency_ms']:.2f} "
            f"| {r['torch_latency_ms'] / r['onnx_latency_ms']:.2f}x | {r['torch_samples_per_s']:.2f} "
            f"| {r['onnx_samples_per_s']:.2f} | {r['onnx_samples_per_s'] / r['torch_samples_per_s']:.2f}x "
            f"| {r['denoiser_max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows += bench_model(name, args.batches, args.steps, args.repeats, Path(tmp))
    description = machine()
    table = markdown(rows, description)
    print(table)
    if args.json:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        args.json.write_text(json.dumps({"machine": description, "git": revision, "results": rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
