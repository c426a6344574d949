"""Measure constrained sampling on held-out Fashion-MNIST: known-region PSNR, FD and time per method.

    python scripts/bench_inpainting.py --ckpt logs/train/quickstart/checkpoints/last.ckpt \
        --output docs/bench/inpainting --num-images 200 --runs newton:20 replace:20 replace:50 dps:50

For each mask (``--masks``, the region to generate; default ``right_half``: the right half from the
known left half, and ``center``) and each run ``METHOD:STEPS`` (DDIM with ``--eta``), the first
``--num-images`` Fashion-MNIST test images are completed, one seeded generator per image
(``--seed`` + index), and measured:

- ``psnr_known_db``: PSNR (data range 2, images clamped to [-1, 1]) on the known pixels, against
  the input: consistency with the constraint. ``replace`` pastes them, so it is exact (inf) in
  pixel space; the mean is over images;
- ``psnr_hole_db``: PSNR on the generated pixels against the real image there. Not a quality
  measure (many completions are plausible), only how close the completion lands to the truth;
- ``fd``: Fréchet distance of the completed images to the *other* test images (those not
  inpainted), in the features of the offline Fashion-MNIST classifier
  (``evaluation/fmnist_classifier.py``). With a few hundred images FD has a large small-sample
  bias, so the table also gives the FD of the same number of real, unmodified images (the floor);
- ``s_per_image``: wall time of sampling divided by the number of images (batches of
  ``--batch-size``), and ``nfe``: network forward passes per image (``dps`` adds as many backward
  passes).

Writes ``inpainting.md`` (the table), ``inpainting.json`` (everything, with the settings) and
``grid_<mask>.png`` (rows: input, masked input, one row per run; the first 12 images) into
``--output``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from spectral_diffusion.assembly import load_run
from spectral_diffusion.data.fashion_mnist import GrayscaleImageDataset, load_split, locate_fashion_mnist
from spectral_diffusion.diffusion.constrained import METHODS, NewtonSettings, network_calls_per_step
from spectral_diffusion.diffusion.samplers import DDIMSampler
from spectral_diffusion.evaluation.fmnist_classifier import FMNISTFeatureExtractor
from spectral_diffusion.evaluation.fmnist_weights import resolve_weights
from spectral_diffusion.evaluation.frechet import FeatureStatistics
from spectral_diffusion.inpainting import NAMED_HOLES, decoded_shape, inpaint, known_mask, masked_psnr, named_hole
from spectral_diffusion.utils.images import save_grid
from spectral_diffusion.utils.run import git_revision

GRID_IMAGES = 12


def parse_run(text: str) -> tuple[str, int]:
    """``METHOD:STEPS`` -> ``(method, steps)``."""
    method, _, steps = text.partition(":")
    if method not in METHODS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"run {text!r} must be METHOD:STEPS with METHOD in {list(METHODS)}")
    return method, int(steps)


def features(extractor: FMNISTFeatureExtractor, images: torch.Tensor) -> FeatureStatistics:
    return FeatureStatistics(extractor=extractor.identity).update(extractor(images))


def mean_psnr(values: torch.Tensor) -> float:
    """Mean over images; ``inf`` only if every image matches exactly."""
    finite = values[torch.isfinite(values)]
    return math.inf if len(finite) == 0 else float(finite.mean())


def run_one(args: argparse.Namespace, model, images: torch.Tensor, known: torch.Tensor, method: str, steps: int):
    """Complete ``images`` with one method; returns (completed images, seconds)."""
    sampler = DDIMSampler(model.diffusion, eta=args.eta, steps=steps, clip_sample=args.clip_sample)
    outputs, seconds = [], 0.0
    for start in range(0, len(images), args.batch_size):
        batch = images[start : start + args.batch_size].to(args.device)
        generators = [torch.Generator().manual_seed(args.seed + start + i) for i in range(len(batch))]
        begin = time.perf_counter()
        result = inpaint(
            model.network,
            sampler,
            batch,
            known.to(args.device),
            method=method,
            first_stage=model.first_stage,
            generator=generators,
            newton=NewtonSettings(),
            dps_scale=args.dps_scale,
        )
        seconds += time.perf_counter() - begin
        outputs.append(result.images.cpu())
    return torch.cat(outputs), seconds


def markdown_table(rows: list[dict[str, Any]], floor_fd: float, num_images: int, extractor: str) -> str:
    lines = [
        f"Held-out Fashion-MNIST test images: {num_images}; FD against the other "
        f"test images in `{extractor}` features. FD of {num_images} real, unmodified images: **{floor_fd:.2f}** "
        "(the small-sample floor).",
        "",
        "| mask (generated) | method | DDIM steps | NFE / image | PSNR known (dB) | PSNR hole vs truth (dB) | FD | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        known = "exact (pasted)" if math.isinf(r["psnr_known_db"]) else f"{r['psnr_known_db']:.2f}"
        nfe = f"{r['nfe']}" + (" + backward" if r["method"] == "dps" else "")
        lines.append(
            f"| {r['mask']} | {r['method']} | {r['steps']} | {nfe} | {known} | {r['psnr_hole_db']:.2f} | "
            f"{r['fd']:.2f} | {r['s_per_image']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="a pixel- or latent-space Fashion-MNIST checkpoint")
    parser.add_argument("--output", type=Path, required=True, help="folder for inpainting.md/.json and the grids")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--runs", type=parse_run, nargs="+", default=[("newton", 20), ("replace", 50), ("dps", 50)])
    parser.add_argument("--masks", nargs="+", default=["right_half", "center"], choices=NAMED_HOLES)
    parser.add_argument(
        "--eta", type=float, default=1.0, help="DDIM eta (the paper's Newton method: a stochastic DDIM step)"
    )
    parser.add_argument("--clip-sample", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--dps-scale", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the standard places)")
    parser.add_argument(
        "--classifier", type=Path, default=None, help="FD extractor weights (default: the cached default weights)"
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    args.device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    args.output.mkdir(parents=True, exist_ok=True)

    model = load_run(args.ckpt).to(args.device)
    model.network.requires_grad_(False)  # dps differentiates with respect to x_t only
    shape = decoded_shape(model.shape, model.first_stage)
    if shape != (1, 32, 32) or model.diffusion is None:
        raise SystemExit(
            f"{args.ckpt} makes images of shape {shape}; this benchmark needs a Fashion-MNIST (1, 32, 32) model"
        )
    test = GrayscaleImageDataset(*load_split(locate_fashion_mnist(args.data_root, False, None), "test"), pad_to=32)
    all_images = torch.stack([test[i][0] for i in range(len(test))])
    if not 2 <= args.num_images < len(all_images) // 2:
        raise SystemExit(f"--num-images must be in [2, {len(all_images) // 2}), got {args.num_images}")
    images, reference_images = all_images[: args.num_images], all_images[args.num_images :]

    extractor = FMNISTFeatureExtractor(resolve_weights(args.classifier))
    reference = features(extractor, reference_images)
    floor_fd = features(extractor, images).frechet_distance(reference)
    print(f"FD of {len(images)} real test images vs the other {len(reference_images)}: {floor_fd:.3f}", flush=True)

    rows: list[dict[str, Any]] = []
    for mask_name in args.masks:
        hole = named_hole(mask_name, 32, 32)
        known = known_mask(hole)
        grid_rows = [images[:GRID_IMAGES], images[:GRID_IMAGES] * known]
        for method, steps in args.runs:
            completed, seconds = run_one(args, model, images, known, method, steps)
            row = {
                "mask": mask_name,
                "method": method,
                "steps": steps,
                "nfe": steps * network_calls_per_step(method, NewtonSettings()),
                "psnr_known_db": mean_psnr(masked_psnr(completed, images, known)),
                "psnr_hole_db": mean_psnr(masked_psnr(completed, images, hole)),
                "fd": features(extractor, completed).frechet_distance(reference),
                "s_per_image": seconds / len(images),
            }
            rows.append(row)
            grid_rows.append(completed[:GRID_IMAGES])
            print(json.dumps(row), flush=True)
        save_grid(torch.cat(grid_rows), args.output / f"grid_{mask_name}.png", nrow=len(grid_rows[0]), scale=2)

    table = markdown_table(rows, floor_fd, len(images), extractor.identity)
    (args.output / "inpainting.md").write_text(table)
    record = {
        "rows": [{k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()} for r in rows],
        "floor_fd": floor_fd,
        "settings": {
            "ckpt": model.source,
            "weights": model.weights,
            "global_step": model.global_step,
            "num_images": len(images),
            "reference_images": len(reference_images),
            "eta": args.eta,
            "clip_sample": args.clip_sample,
            "dps_scale": args.dps_scale,
            "newton": NewtonSettings().__dict__,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "extractor": extractor.identity,
            "device": str(args.device),
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "git": git_revision(),
        },
    }
    (args.output / "inpainting.json").write_text(json.dumps(record, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
