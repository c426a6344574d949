"""Train a diffusion model: ``python train.py [experiment=NAME] [key=value ...]``.

With no arguments this is the Fashion-MNIST quickstart (configs/train.yaml). The path from here
to the loss: ``build_module`` (spectral_diffusion/training/setup.py) assembles the
``DiffusionModule`` (spectral_diffusion/training/module.py), whose ``training_step`` calls the
configured loss (spectral_diffusion/losses/).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from spectral_diffusion.assembly import ConfigError, check_data_fits_model
from spectral_diffusion.evaluation.cost import count_gmacs, count_params
from spectral_diffusion.training.batching import BatchPlan, resolve_batch_plan, scaled_lr
from spectral_diffusion.training.callbacks import LoggerIds
from spectral_diffusion.training.module import DiffusionModule
from spectral_diffusion.training.performance import configure_tf32, explain_out_of_memory
from spectral_diffusion.training.preemption import slurm_job_id, was_preempted
from spectral_diffusion.training.setup import build_module
from spectral_diffusion.utils.checkpoint import (
    CheckpointMismatchError,
    describe_mismatch,
    network_state_dict,
    read_checkpoint,
)
from spectral_diffusion.utils.cli import report_user_errors, run
from spectral_diffusion.utils.run import (
    check_resume_config,
    continue_logger_runs,
    drop_file_log_handlers,
    find_resume_checkpoint,
    register_resolvers,
    resume_mode,
    stored_logger_ids,
    task_wrapper,
    write_metrics,
    write_run_record,
)
from spectral_diffusion.utils.stored_config import config_targets

log = logging.getLogger("train")
register_resolvers()


def instantiate_collection(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a ``callbacks`` / ``logger`` group (skipping nulls)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[L.Callback]:
    """The ``callbacks`` group, plus the loggers' run ids in checkpoints.

    Lightning's ``LearningRateMonitor`` refuses to run without a logger (``logger=none``,
    ``debug=fdr``); with nothing to log to it is left out.
    """
    callbacks = instantiate_collection(cfg.get("callbacks"))
    if not has_logger:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return [*callbacks, LoggerIds()]


def check_checkpoint_fits(module: L.LightningModule, ckpt_path: str, explicit: bool, resume: str | bool) -> None:
    """Refuse a checkpoint that the configured run cannot continue.

    - A run directory's own checkpoint (``explicit=False``) must have been made with the same
      settings, unless ``resume=true`` (:func:`check_resume_config` lists what differs).
    - Any checkpoint's network must fit the configured one: the error names the mismatched keys.
    """
    # Keys and shapes only (memory-mapped); the stored config is checked like any checkpoint's.
    # The targets this very command names (a run's own callbacks, say) are the user's, so allowed.
    checkpoint, stored_config = read_checkpoint(
        ckpt_path, map_location="cpu", mmap=True, also_allowed=config_targets(module.run_config)
    )
    if not explicit:
        check_resume_config(stored_config, module.run_config, ckpt_path, resume)
    problem = describe_mismatch(module.net.state_dict(), network_state_dict(checkpoint, use_ema=False))
    if problem:
        stored = (stored_config or {}).get("model")
        raise CheckpointMismatchError(
            f"cannot resume from {ckpt_path}: its network does not fit the configured model.{problem}\n"
            f"The checkpoint was trained with model={stored}.\n"
            "Use the same model config, or a new run_name=... for a fresh run."
        )


def save_final_checkpoint(trainer: L.Trainer) -> None:
    """Make ``last.ckpt`` hold the final step.

    ModelCheckpoint saves only every ``every_n_train_steps``; when ``max_steps`` is not a multiple
    of it, the last steps would be missing from ``last.ckpt`` (and from a teacher read from it).
    """
    callback = trainer.checkpoint_callback
    if callback is None or not getattr(callback, "save_last", False) or callback.dirpath is None:
        return
    if getattr(callback, "_last_global_step_saved", None) == trainer.global_step:
        return
    trainer.save_checkpoint(Path(callback.dirpath) / "last.ckpt")
    log.info("saved the final step %d to %s", trainer.global_step, Path(callback.dirpath) / "last.ckpt")


def log_config(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Give every logger the resolved run config (wandb's run config, hparams.yaml, TensorBoard's hparams)."""
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hydra"}
    for logger in trainer.loggers:  # loggers write on rank 0 only
        logger.log_hyperparams(config)


def apply_batch_plan(cfg: DictConfig, world_size: int) -> BatchPlan:
    """Derive the per-device batch, the accumulation and the learning rate from ``batch.*``.

    The derived values are written into ``cfg`` (``data.batch_size``,
    ``trainer.accumulate_grad_batches``, ``module.optimizer.lr``), so the run's ``config.yaml`` and
    checkpoints record what was used, and are logged.
    """
    batch_cfg = cfg.get("batch") or {}
    plan = resolve_batch_plan(
        batch_cfg.get("global_size"),
        batch_cfg.get("per_device_max"),
        int(cfg.data.batch_size),
        int(cfg.trainer.get("accumulate_grad_batches", 1)),
        world_size,
    )
    rule = batch_cfg.get("lr_scaling", "none")
    optimizer_cfg = cfg.module.get("optimizer")
    with open_dict(cfg):
        cfg.data.batch_size = plan.per_device
        cfg.trainer.accumulate_grad_batches = plan.accumulate
        if rule != "none":
            if optimizer_cfg is None or optimizer_cfg.get("lr") is None:
                raise ConfigError(f"batch.lr_scaling={rule} needs module.optimizer.lr to scale")
            base = float(optimizer_cfg.lr)
            optimizer_cfg.lr = scaled_lr(base, rule, plan.global_size, batch_cfg.get("reference_size"))
            log.info(
                "learning rate %.4g = module.optimizer.lr %.4g scaled by batch.lr_scaling=%s from "
                "batch.reference_size=%s to the global batch %d",
                optimizer_cfg.lr,
                base,
                rule,
                batch_cfg.get("reference_size"),
                plan.global_size,
            )
    log.info("%s", plan.describe())
    return plan


def prepare_latent_stats(first_stage: torch.nn.Module, datamodule: L.LightningDataModule, cfg: DictConfig) -> None:
    """Give the first stage the latent normalisation of this run (a resumed run restores its own).

    - Cached latents (``data=latents``) carry the statistics they were normalised with.
    - A first stage that already has statistics (a teacher's, or the framework autoencoder's own
      checkpoint) keeps them: the teacher must see the latents it was trained on.
    - Otherwise they are estimated from ``latent_stats_samples`` training images.
    """
    from spectral_diffusion.autoencoders import estimate_latent_stats

    if getattr(datamodule, "provides_latents", False):
        stats = datamodule.latent_stats
        if bool(first_stage.has_latent_stats):
            ours = first_stage.latent_stats()
            same = all(
                torch.allclose(torch.tensor(ours[k]), torch.tensor(stats[k]), rtol=1e-4, atol=1e-6)
                for k in ("shift", "scale")
            )
            if not same:
                # A teacher (or a framework autoencoder) fixes the normalisation its latents must have.
                raise ConfigError(
                    f"the cached latents were normalised with {stats} but the first stage of this run "
                    f"({first_stage.describe().get('kind')}) requires {ours}: re-encode them with "
                    "scripts/encode_latents.py and that autoencoder, or train from images (on-the-fly encoding)"
                )
        first_stage.set_latent_stats(torch.tensor(stats["shift"]), torch.tensor(stats["scale"]))
        log.info("latent statistics from the latent store: %s", stats)
        return
    if bool(first_stage.has_latent_stats):
        log.info("latent statistics of the first stage: %s", first_stage.latent_stats())
        return
    datamodule.setup("fit")
    samples = int(cfg.get("latent_stats_samples", 2048))
    shift, scale = estimate_latent_stats(first_stage, (b[0] for b in datamodule.train_dataloader()), samples)
    first_stage.set_latent_stats(shift, scale)
    log.info("latent statistics estimated from %d training images: %s", samples, first_stage.latent_stats())


@task_wrapper
def train(cfg: DictConfig) -> float | None:
    """Build everything from ``cfg``, fit, and return ``cfg.optimized_metric`` (for sweeps).

    Every process of a DDP run executes this; only rank 0 writes the run record, checkpoints,
    samples, logs and ``metrics.json``, all into the one run directory.
    """
    if cfg.get("dry_run"):  # utils/cli.py has told Hydra to write nothing for it
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return None
    configure_tf32(bool(cfg.get("tf32", False)))
    ckpt_path = find_resume_checkpoint(cfg)
    # A resumed (or requeued) run keeps logging to its wandb run: the id is in the checkpoint.
    continue_logger_runs(cfg.get("logger"), stored_logger_ids(ckpt_path))

    # The trainer first: the batch plan needs its world size (devices x nodes).
    loggers = instantiate_collection(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=build_callbacks(cfg, has_logger=bool(loggers)), logger=loggers or False
    )
    if not trainer.is_global_zero:
        drop_file_log_handlers()  # one log file, written by rank 0 (console output stays)
    plan = apply_batch_plan(cfg, trainer.world_size)
    trainer.accumulate_grad_batches = plan.accumulate

    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    gmacs: float | None = None
    if isinstance(module, DiffusionModule):
        if getattr(datamodule, "provides_latents", False) and module.first_stage is None:
            raise ConfigError(
                f"data={cfg.data._target_.rsplit('.', 1)[-1]} holds cached latents (encoded by "
                f"{getattr(datamodule, 'first_stage_description', '?')}) but autoencoder=identity: set autoencoder= "
                "to the autoencoder that encoded them, so that samples can be decoded"
            )
        check_data_fits_model(datamodule, module.net, module.first_stage)
        shape = module.sample_shape
        gmacs = count_gmacs(module.net, shape, module.class_conditional)
        frozen = ", ".join(f"{type(m).__name__} {count_params(m) / 1e6:.3f}M frozen" for m in module.frozen_modules())
        log.info(
            "model %s: %.3fM parameters, %.4f GMACs per forward pass at %s%s",
            cfg.model._target_.rsplit(".", 1)[-1],
            count_params(module.net) / 1e6,
            gmacs,
            "x".join(map(str, shape)),
            f" ({frozen})" if frozen else "",
        )
        if module.first_stage is not None and not ckpt_path:
            prepare_latent_stats(module.first_stage, datamodule, cfg)
    if ckpt_path:
        check_checkpoint_fits(module, ckpt_path, explicit=bool(cfg.get("ckpt_path")), resume=resume_mode(cfg))

    if trainer.is_global_zero:
        write_run_record(cfg, cfg.paths.output_dir)
    log_config(trainer, cfg)
    fit_start = time.perf_counter()
    with explain_out_of_memory(plan.per_device, plan.accumulate):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_seconds = time.perf_counter() - fit_start
    if was_preempted(trainer):
        log.warning(
            "stopped by a preemption signal at step %d; re-run the same command (a requeued job does) to resume",
            trainer.global_step,
        )
        if slurm_job_id() is not None:
            # The job was requeued: exit without a result, so that a sweep records the requeued
            # attempt's metric instead of counting this interrupted one as a failed trial.
            raise SystemExit(0)
        return None
    save_final_checkpoint(trainer)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    log.info("final metrics: %s", metrics)
    log.info("run directory: %s", cfg.paths.output_dir)
    value = metrics.get(cfg.get("optimized_metric"))
    if trainer.is_global_zero:
        net = getattr(module, "net", None)
        write_metrics(
            cfg.paths.output_dir,
            {
                str(cfg.get("optimized_metric")): value,
                "metrics": metrics,
                "gmacs": gmacs,
                "params_m": count_params(net) / 1e6 if net is not None else None,
                "global_step": int(trainer.global_step),
                "global_batch_size": plan.global_size,
                # this command's Trainer.fit wall time (a resumed run counts only its last part)
                "fit_seconds": fit_seconds,
                "resumed": bool(ckpt_path),
                "run_dir": str(cfg.paths.output_dir),
            },
        )
    return value


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    run(main)
