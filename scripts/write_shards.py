"""Write a data set as LitData shards: ``python scripts/write_shards.py data=NAME output=DIR_OR_URI [kind=images|latents]``.

    python scripts/write_shards.py data=fashion_mnist output=data/shards/fmnist
    python train.py data=streaming data.input_dir=data/shards/fmnist

The config is ``configs/write_shards.yaml`` (the ``data`` group of train.py). ``<output>/train`` and
``<output>/val`` become two shard sets (``spectral_diffusion/data/shards.py``). Unreadable images are
reported and left out (``data.on_corrupt=error`` stops at the first); an interrupted write resumes
when the same command runs again.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from spectral_diffusion.data.shards import write_shards
from spectral_diffusion.utils.cli import report_user_errors, run
from spectral_diffusion.utils.run import register_resolvers, task_wrapper

log = logging.getLogger("write_shards")
register_resolvers()


@task_wrapper
def write(cfg: DictConfig) -> dict[str, Any]:
    """Write the configured splits and return ``{split: item count}``."""
    datamodule = hydra.utils.instantiate(cfg.data)
    written = write_shards(
        datamodule,
        str(cfg.output),
        kind=cfg.kind,
        splits=tuple(cfg.splits),
        chunk_bytes=cfg.chunk_bytes,
        num_workers=int(cfg.num_workers),
        overwrite=bool(cfg.overwrite),
        start_method=cfg.start_method,
        source={"data": OmegaConf.to_container(cfg.data, resolve=True)},
        storage_options=OmegaConf.to_container(cfg.storage_options, resolve=True),
    )
    counts = {split: sidecar["count"] for split, sidecar in written.items()}
    log.info(
        "shards: %s in %s (train with: python train.py data=streaming data.input_dir=%s)",
        counts,
        cfg.output,
        cfg.output,
    )
    return counts


@hydra.main(version_base="1.3", config_path="../configs", config_name="write_shards")
@report_user_errors
def main(cfg: DictConfig) -> None:
    write(cfg)


if __name__ == "__main__":
    run(main)
