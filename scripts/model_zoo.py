"""Write docs/models.md: every model preset with its shape, parameters, GMACs and ratio to its teacher.

    python scripts/model_zoo.py [--output docs/models.md]

Every number comes from ``spectral_diffusion.evaluation.cost``, the counter ``evaluate.py`` uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir

from spectral_diffusion.evaluation.cost import attention_product_ops, count_params, gmacs_by_op

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"

#: The teacher each family of presets is measured against (by name prefix/suffix).
#: First match wins: the CPU-budget Fashion-MNIST students are measured against fmnist_small.
TEACHERS = {
    "celebahq": "ldm_celebahq",
    "church": "ldm_church",
    "cifar10": "cifar10_ddpm",
    "fmnist_tiny": "fmnist_small",
    "fmnist": "fmnist_base",
}


def teacher_of(preset: str) -> str:
    return next(teacher for family, teacher in TEACHERS.items() if family in preset)


def measure(preset: str) -> dict:
    """Params and GMACs of a ``configs/model/<preset>.yaml`` network."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="evaluate", overrides=[f"model={preset}"])
    net = hydra.utils.instantiate(cfg.model)
    shape = (net.in_channels, net.image_size, net.image_size)
    by_op = gmacs_by_op(net, shape)
    total = sum(by_op.values())
    return {
        "preset": preset,
        "shape": f"{shape[1]}x{shape[2]}x{shape[0]}",
        "params_m": count_params(net) / 1e6,
        "gmacs": total,
        "gmacs_no_attn": total - attention_product_ops(by_op),
        "resampling": f"{cfg.model.downsample} / {cfg.model.upsample}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "models.md")
    args = parser.parse_args(argv)

    presets = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
    rows = {p: measure(p) for p in presets}
    lines = [
        "# Model presets",
        "",
        "Written by `python scripts/model_zoo.py`. One forward pass on one sample at the preset's",
        "resolution. GMACs = `torch.utils.flop_counter.FlopCounterMode` FLOPs / 2, the counter that",
        "`evaluate.py` uses; it counts convolutions, linear layers and attention's QK^T / AV products,",
        "not element-wise ops or norms. *w/o attn products* leaves those products out: that is how",
        "the 96.0 GMACs quoted for the CelebA-HQ LDM teacher were counted (our replica: "
        f"{rows['ldm_celebahq']['gmacs_no_attn']:.2f}).",
        "The ratio is the teacher's GMACs over the preset's (both with attention products).",
        "",
        "| preset | input (HxWxC) | params (M) | GMACs | GMACs w/o attn products | down / up | teacher | GMACs ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for preset, r in rows.items():
        teacher = teacher_of(preset)
        ratio = rows[teacher]["gmacs"] / r["gmacs"]
        lines.append(
            f"| `{preset}` | {r['shape']} | {r['params_m']:.2f} | {r['gmacs']:.3f} | {r['gmacs_no_attn']:.3f} "
            f"| {r['resampling']} | `{teacher}` | {ratio:.1f}x |"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
