"""Train a diffusion model: ``python train.py [experiment=NAME] [key=value ...]``.

With no arguments this is the Fashion-MNIST quickstart (configs/train.yaml). The path from here
to the loss: ``build_module`` (spectral_diffusion/training/build.py) assembles the
``DiffusionModule`` (spectral_diffusion/training/module.py), whose ``training_step`` calls the
configured loss (spectral_diffusion/losses/).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from spectral_diffusion.evaluation.cost import count_gmacs, count_params
from spectral_diffusion.training.build import build_module, check_data_fits_model
from spectral_diffusion.utils.checkpoint import (
    CheckpointMismatchError,
    checkpoint_config,
    describe_mismatch,
    load_checkpoint,
    network_state_dict,
)
from spectral_diffusion.utils.run import find_resume_checkpoint, register_resolvers, task_wrapper, write_run_record

log = logging.getLogger("train")
register_resolvers()


def instantiate_collection(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``callbacks`` / ``logger`` group (skipping nulls)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def check_checkpoint_fits(module: L.LightningModule, ckpt_path: str) -> None:
    """Refuse, naming the mismatched keys, a checkpoint whose network differs from the configured one."""
    checkpoint = load_checkpoint(ckpt_path, map_location="cpu", mmap=True)  # keys and shapes only
    problem = describe_mismatch(module.net.state_dict(), network_state_dict(checkpoint, use_ema=False))
    if problem:
        stored = (checkpoint_config(checkpoint) or {}).get("model")
        raise CheckpointMismatchError(
            f"cannot resume from {ckpt_path}: its network does not fit the configured model.{problem}\n"
            f"The checkpoint was trained with model={stored}.\n"
            "Use the same model config, or a new run_name=... for a fresh run."
        )


@task_wrapper
def train(cfg: DictConfig) -> float | None:
    """Build everything from ``cfg``, fit, and return ``cfg.optimized_metric`` (for sweeps)."""
    if cfg.get("dry_run"):
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return None
    L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    check_data_fits_model(datamodule, module.net)
    shape = module.sample_shape
    log.info(
        "model %s: %.3fM parameters, %.4f GMACs per forward pass at %s",
        cfg.model._target_.rsplit(".", 1)[-1],
        count_params(module.net) / 1e6,
        count_gmacs(module.net, shape, module.class_conditional),
        "x".join(map(str, shape)),
    )

    ckpt_path = find_resume_checkpoint(cfg)
    if ckpt_path:
        check_checkpoint_fits(module, ckpt_path)

    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_collection(cfg.get("callbacks")),
        logger=instantiate_collection(cfg.get("logger")) or False,
    )
    if trainer.is_global_zero:
        write_run_record(cfg, cfg.paths.output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    log.info("final metrics: %s", metrics)
    log.info("run directory: %s", cfg.paths.output_dir)
    return metrics.get(cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
