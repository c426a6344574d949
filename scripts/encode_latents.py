"""Encode a data set once into latent stores: ``python scripts/encode_latents.py output=DIR [overrides]``.

    python scripts/encode_latents.py data=fashion_mnist autoencoder=framework \
        autoencoder.ckpt_path=logs/train/fmnist_autoencoder/checkpoints/last.ckpt output=data/latents/fmnist

The config is ``configs/encode_latents.yaml`` (the ``data`` and ``autoencoder`` groups of train.py).
``<output>/train`` and ``<output>/val`` become two stores (see ``spectral_diffusion/data/latents.py``),
each written atomically; ``flips=true`` adds the mirrored training images. If the first stage has
no latent statistics, they are estimated from the training images first, so both stores carry
the same normalisation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from spectral_diffusion.autoencoders import estimate_latent_stats
from spectral_diffusion.data.latents import write_latent_store
from spectral_diffusion.utils.cli import report_user_errors, run
from spectral_diffusion.utils.run import register_resolvers, task_wrapper

log = logging.getLogger("encode_latents")
register_resolvers()


class ConfigError(ValueError):
    """The config asks for something this script cannot do (the message names the key)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _ordered_loader(loader: DataLoader | None, batch_size: int) -> DataLoader | None:
    """The same dataset in a fixed order: a store must not depend on shuffling."""
    if loader is None or not hasattr(loader, "dataset"):
        return None
    return DataLoader(loader.dataset, batch_size=batch_size, shuffle=False, drop_last=False)


@task_wrapper
def encode_latents(cfg: DictConfig) -> dict[str, Any]:
    """Write ``<output>/train`` (and ``<output>/val``) and return their paths and counts."""
    if str(cfg.autoencoder.get("_target_", "")).endswith("IdentityFirstStage"):
        raise ConfigError(
            "autoencoder=identity is pixel space: there is nothing to encode; train on data=... directly, or "
            "pick autoencoder=framework / autoencoder=diffusers"
        )
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data_cfg = cfg.data.copy()
    if "random_flip" in data_cfg and data_cfg.random_flip:
        log.info("data.random_flip is ignored: stores are deterministic; use flips=true to add mirrored images")
    with open_dict(data_cfg):
        if "random_flip" in data_cfg:
            data_cfg.random_flip = False
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_loader = _ordered_loader(datamodule.train_dataloader(), cfg.batch_size)
    val_loader = _ordered_loader(datamodule.val_dataloader(), cfg.batch_size)
    if train_loader is None:
        raise ConfigError(f"data={cfg.data._target_} has no training dataset to encode")

    first_stage = hydra.utils.instantiate(cfg.autoencoder).to(device)
    if not first_stage.has_latent_stats:
        shift, scale = estimate_latent_stats(
            first_stage,
            train_loader,
            cfg.stats_max_samples,
            per_channel_scale=cfg.per_channel_scale,
            generator=torch.Generator(device).manual_seed(cfg.seed),
        )
        first_stage.set_latent_stats(shift, scale)
        log.info(
            "estimated latent stats from %d training images: %s", cfg.stats_max_samples, first_stage.latent_stats()
        )

    output = Path(cfg.output).expanduser()
    data_record = OmegaConf.to_container(data_cfg, resolve=True)
    result: dict[str, Any] = {}
    for split, loader, flips in (("train", train_loader, cfg.flips), ("val", val_loader, False)):
        if loader is None:
            continue
        path = write_latent_store(
            output / split,
            first_stage,
            loader,
            flips=flips,
            dtype=cfg.dtype,
            max_samples=cfg.max_samples,
            num_classes=getattr(datamodule, "num_classes", None),
            source={"data": data_record, "split": split},
            overwrite=cfg.overwrite,
        )
        result[split] = str(path)
    log.info("latent stores: %s (train with spectral_diffusion.data.LatentDataModule(path=%s))", result, output)
    return result


@hydra.main(version_base="1.3", config_path="../configs", config_name="encode_latents")
@report_user_errors
def main(cfg: DictConfig) -> None:
    encode_latents(cfg)


if __name__ == "__main__":
    run(main)
