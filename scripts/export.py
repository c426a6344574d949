"""Export a trained model: ``python scripts/export.py ckpt_path=PATH format=diffusers|onnx output=DIR``.

    python scripts/export.py ckpt_path=logs/train/fmnist_sd/checkpoints/last.ckpt format=diffusers \
        output=exports/fmnist_sd metrics_json=logs/evaluate/fmnist_sd/metrics.json
    python scripts/export.py ckpt_path=logs/train/fmnist_sd/checkpoints/last.ckpt format=onnx output=exports/fmnist_sd_onnx

The config is ``configs/export.yaml``; the formats are written by ``spectral_diffusion/export/``
(``format=diffusers``: a folder for ``SpectralDiffusionPipeline.from_pretrained``; ``format=onnx``:
ONNX graphs with a numpy + onnxruntime DDIM sampler). The checkpoint loads through the framework's
one loader, with the EMA weights by default.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from spectral_diffusion.assembly import build_sampler, load_run
from spectral_diffusion.assembly.load import MissingStoredConfigError
from spectral_diffusion.export import EXPORT_FORMATS, ExportError, checked_quality, export_diffusers, export_onnx
from spectral_diffusion.utils.cli import report_user_errors, run
from spectral_diffusion.utils.run import register_resolvers, task_wrapper

log = logging.getLogger("export")
register_resolvers()


@task_wrapper
def export(cfg: DictConfig) -> dict[str, Any]:
    """Write the export and return where it went (and, for ONNX, the parity figures)."""
    if cfg.format not in EXPORT_FORMATS:
        raise ExportError(f"format={cfg.format!r} is not one of {list(EXPORT_FORMATS)}")
    try:
        bundle = load_run(cfg.ckpt_path, use_ema=cfg.use_ema)
    except MissingStoredConfigError as err:
        raise ExportError(
            f"ckpt_path={cfg.ckpt_path} holds no stored run config, which export needs to rebuild the network and "
            "describe the run; export a checkpoint written by train.py"
        ) from err
    sampler = build_sampler(cfg.sampler, bundle.diffusion)
    quality = checked_quality(cfg.metrics_json, bundle)
    if cfg.format == "diffusers":
        output = export_diffusers(bundle, sampler, cfg.output, cfg.overwrite, quality)
        log.info("wrote %s: load it with SpectralDiffusionPipeline.from_pretrained(%r)", output, str(output))
        return {"output": str(output)}
    output, parity = export_onnx(bundle, sampler, cfg.output, cfg.overwrite, cfg.opset, quality)
    for name, difference in parity.items():
        log.info("ONNX Runtime vs torch fp32, %s: %.3g", name, difference)
    log.info("wrote %s: sample with python %s/sample_onnx.py %s", output, output, output)
    return {"output": str(output), **parity}


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
@report_user_errors
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    run(main)
