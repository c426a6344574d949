"""Evaluate a checkpoint or a model preset: ``python evaluate.py ckpt_path=PATH`` / ``model=PRESET``.

- With ``ckpt_path``, the network is rebuilt from the config stored in the checkpoint (or from
  ``model=PRESET`` if given, which must then fit the weights), loaded with ``weights_only=True``
  (EMA weights unless ``use_ema=false``), and a sample grid is written.
- Without it, ``model=PRESET`` alone reports the preset's cost.

Both write ``metrics.json`` in the run directory (``logs/evaluate/<time>``) and print a table.
Keys: ``params_m`` (millions of parameters), ``gmacs`` (GMACs of one forward pass, FlopCounterMode
FLOPs / 2), ``gmacs_attention_products`` (the part of ``gmacs`` in attention's QK^T and AV
products), ``input_shape``, and with a checkpoint ``global_step``, ``weights``, ``sampler``,
``sampling_s`` and ``samples_png``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from spectral_diffusion.diffusion.samplers import sample
from spectral_diffusion.evaluation.cost import attention_product_ops, count_params, gmacs_by_op
from spectral_diffusion.training.build import (
    ConfigError,
    build_diffusion,
    build_first_stage,
    build_network,
    build_sampler,
)
from spectral_diffusion.utils.checkpoint import (
    METADATA_KEY,
    checkpoint_config,
    load_checkpoint,
    load_network_weights,
    network_state_dict,
)
from spectral_diffusion.utils.images import save_grid
from spectral_diffusion.utils.run import git_revision, register_resolvers, task_wrapper

log = logging.getLogger("evaluate")
register_resolvers()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def print_table(metrics: dict[str, Any]) -> None:
    width = max(map(len, metrics))
    print("-" * (width + 24))
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print("-" * (width + 24))


def stored_first_stage(checkpoint: dict[str, Any], stored: dict[str, Any], device: torch.device):
    """The first stage a checkpoint was trained in (``None``: pixel space), with its latent statistics."""
    first_stage = build_first_stage(OmegaConf.create(stored["autoencoder"])) if stored.get("autoencoder") else None
    if first_stage is None:
        return None
    stats = checkpoint.get(METADATA_KEY, {}).get("latent_stats")
    if stats:
        first_stage.set_latent_stats(torch.tensor(stats["shift"]), torch.tensor(stats["scale"]))
    return first_stage.to(device)


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation described by ``cfg`` and return the metrics written to ``metrics.json``."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    metrics: dict[str, Any] = {}

    checkpoint = None
    if cfg.get("ckpt_path"):
        checkpoint = load_checkpoint(cfg.ckpt_path)
        stored = checkpoint_config(checkpoint)
        if cfg.get("model") is None and stored is None:
            raise ConfigError(
                f"{cfg.ckpt_path} holds no spectral_diffusion config; pass the model it was trained with, model=PRESET"
            )
        model_cfg = cfg.model if cfg.get("model") is not None else OmegaConf.create(stored["model"])
    elif cfg.get("model") is not None:
        model_cfg = cfg.model
    else:
        raise ConfigError("nothing to evaluate: give ckpt_path=PATH, or model=PRESET (see configs/model/)")

    net = build_network(model_cfg).to(device)
    shape = (net.in_channels, net.image_size, net.image_size)
    conditional = getattr(net, "num_classes", None) is not None
    metrics["model"] = model_cfg._target_.rsplit(".", 1)[-1]
    metrics["input_shape"] = "x".join(map(str, shape))
    metrics["params_m"] = count_params(net) / 1e6
    by_op = gmacs_by_op(net, shape, conditional)
    metrics["gmacs"] = sum(by_op.values())
    # Part of gmacs spent in attention's QK^T and AV products (often left out of quoted figures).
    metrics["gmacs_attention_products"] = attention_product_ops(by_op)

    if checkpoint is not None:
        weights = network_state_dict(checkpoint, use_ema=cfg.use_ema)
        load_network_weights(net, weights, source=str(cfg.ckpt_path))
        metrics["ckpt_path"] = str(Path(cfg.ckpt_path).resolve())
        metrics["global_step"] = int(checkpoint.get("global_step", -1))
        metrics["weights"] = "ema" if cfg.use_ema and "current_model_state" in checkpoint else "raw"
        if cfg.num_samples > 0:
            if stored is None:
                raise ConfigError(f"{cfg.ckpt_path} holds no diffusion config to sample with; use num_samples=0")
            diffusion = build_diffusion(OmegaConf.create(stored["diffusion"]))
            sampler = build_sampler(cfg.sampler, diffusion)
            labels = torch.arange(cfg.num_samples, device=device) % net.num_classes if conditional else None
            first_stage = stored_first_stage(checkpoint, stored, device)
            net.eval()
            start = time.perf_counter()
            images = sample(
                net,
                sampler,
                (cfg.num_samples, *shape),
                torch.Generator().manual_seed(cfg.seed),
                device,
                class_labels=labels,
            )
            if first_stage is not None:
                with torch.no_grad():
                    images = first_stage.decode(images)
                metrics["first_stage"] = first_stage.describe()["kind"]
                metrics["first_stage_params_m"] = count_params(first_stage) / 1e6
            metrics["sampling_s"] = time.perf_counter() - start
            metrics["sampler"] = f"{type(sampler).__name__}({sampler.num_inference_steps} steps)"
            metrics["samples_png"] = str(save_grid(images, output_dir / "samples.png", scale=2))

    metrics["device"] = str(device)
    metrics["git_commit"] = git_revision()["commit"]
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print_table(metrics)
    log.info("wrote %s", output_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
