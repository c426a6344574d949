"""The LightningModule that trains the framework's own KL autoencoder (``experiment=fmnist_autoencoder``).

It wires a :class:`~spectral_diffusion.autoencoders.KLAutoencoder` (``self.net``) to an
:class:`~spectral_diffusion.losses.AutoencoderLoss` (``self.loss``); it fits the existing callbacks:

- ``SampleGrid`` calls :meth:`AutoencoderModule.generate`, which returns validation images next to
  their reconstructions (so the grids show reconstructions, not samples);
- the EMA callback averages the whole module (only ``net`` has parameters).

Every checkpoint carries, beside the run config, the latent statistics (per-channel mean, std) of
the weights it stores, estimated on a fixed subset of the training data: ``FrameworkAutoencoder``
restores them, so a diffusion model trained on this autoencoder sees unit-variance latents
without re-estimating anything. With EMA the stats are computed for both weight sets
(``latent_stats`` for the EMA weights in ``state_dict``, ``latent_stats_raw`` for
``current_model_state``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from spectral_diffusion.autoencoders.framework_autoencoder import RAW_STATS_KEY, STATS_KEY, KLFirstStage
from spectral_diffusion.autoencoders.kl_autoencoder import KLAutoencoder
from spectral_diffusion.autoencoders.stats import estimate_latent_stats
from spectral_diffusion.losses.autoencoder import AutoencoderLoss
from spectral_diffusion.training.module import log_training_loss, step_generator, warmup_lambda
from spectral_diffusion.utils.checkpoint import METADATA_KEY, NET_PREFIX


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2, so MAX^2 = 4)."""
    mse = (reconstruction.float().clamp(-1, 1) - target.float()).square().flatten(1).mean(dim=1)
    return (10 * torch.log10(4.0 / mse.clamp(min=1e-10))).mean()


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class AutoencoderModule(L.LightningModule):
    """Trains ``net`` to reconstruct its input under ``loss``.

    Args:
        net: the KL autoencoder.
        loss: ``(reconstruction, target, mean, logvar) -> (total, parts)``.
        optimizer: a partially built optimizer (``_partial_: true``); AdamW with lr 1e-3 if ``None``.
        warmup_steps: linear learning-rate warm-up length in optimizer steps.
        seed: base seed of the per-step posterior draws (see ``step_generator``).
        sample_posterior: train on posterior draws (LDM) rather than on the mean.
        stats_max_samples: training images used to estimate the latent stats at each checkpoint.
        stats_batch_size: batch size of that estimate.
        per_channel_scale: one latent std per channel instead of one over all channels.
        channels_last: keep the network and its inputs in channels-last memory format (faster
            convolutions on CPUs and tensor-core GPUs; the results are the same).
        run_config: the resolved run config, stored in every checkpoint as a plain dict.
    """

    class_conditional = False

    def __init__(
        self,
        net: KLAutoencoder,
        loss: AutoencoderLoss,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        warmup_steps: int = 0,
        seed: int = 0,
        sample_posterior: bool = True,
        stats_max_samples: int = 4096,
        stats_batch_size: int = 256,
        per_channel_scale: bool = False,
        channels_last: bool = True,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer or functools.partial(torch.optim.AdamW, lr=1e-3)
        self.warmup_steps = warmup_steps
        self.seed = seed
        self.sample_posterior = sample_posterior
        self.stats_max_samples = stats_max_samples
        self.stats_batch_size = stats_batch_size
        self.per_channel_scale = per_channel_scale
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.run_config = run_config or {}
        self._preview: torch.Tensor | None = None
        # (global_step, weight set) -> stats; step_*.ckpt and last.ckpt of one step share them.
        self._stats_cache: dict[tuple[int, str], dict[str, Any]] = {}

    # -- training ---------------------------------------------------------------------------------
    def _step(self, batch: Any, generator: torch.Generator | None, sample: bool) -> tuple[torch.Tensor, dict, Any]:
        x = _images(batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        reconstruction, mean, logvar = self.net(x, generator=generator, sample_posterior=sample)
        total, parts = self.loss(reconstruction, x, mean, logvar)
        return total, parts, reconstruction

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        generator = step_generator(self.seed, self.global_rank, self.global_step)
        loss, parts, _ = self._step(batch, generator, self.sample_posterior)
        log_training_loss(self, loss, parts, "autoencoder loss")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # The posterior mean: deterministic, so validation numbers of different steps compare.
        loss, parts, reconstruction = self._step(batch, None, sample=False)
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True)
        for name, value in parts.items():
            self.log(f"val/{name}", value, on_epoch=True, sync_dist=True)
        self.log("val/psnr", psnr(reconstruction, _images(batch)), on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(warmup_lambda, warmup_steps=self.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- data access --------------------------------------------------------------------------------
    def _dataset(self, split: str) -> Dataset:
        """The trainer's ``train`` or ``val`` dataset (the DataModule's, else the fitted loaders')."""
        if self._trainer is None:
            raise RuntimeError(
                f"AutoencoderModule needs the {split} data of a Trainer here; call set_preview_images() "
                "before generate() outside of training"
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        loader = None
        if datamodule is not None:
            loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
        else:
            loader = self.trainer.train_dataloader if split == "train" else self.trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise RuntimeError(f"the trainer has no {split} dataset to read images from")
        return dataset

    # -- sample grids -------------------------------------------------------------------------------
    def set_preview_images(self, images: torch.Tensor) -> None:
        """Fix the images whose reconstructions :meth:`generate` shows."""
        self._preview = images.detach().cpu()

    def _preview_images(self, count: int) -> torch.Tensor:
        if self._preview is None or len(self._preview) < count:
            try:
                dataset = self._dataset("val")
            except RuntimeError:
                dataset = self._dataset("train")
            count = min(count, len(dataset))
            self._preview = torch.stack([_images(dataset[i]) for i in range(count)])
        return self._preview[:count]

    @torch.no_grad()
    def generate(
        self, num_samples: int, generator: torch.Generator | None = None, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pairs (original, reconstruction) of the first validation images, interleaved, in [-1, 1].

        ``num_samples // 2`` pairs (at least one), so a grid with an even row length shows each
        image beside its reconstruction. Reconstructions decode the posterior mean, so
        ``generator`` and ``class_labels`` (part of the ``SampleGrid`` protocol) are unused.
        """
        pairs = max(1, num_samples // 2)
        originals = self._preview_images(pairs).to(self.device)
        was_training = self.net.training
        self.net.eval()
        try:
            reconstruction, _, _ = self.net(originals, sample_posterior=False)
        finally:
            self.net.train(was_training)
        return torch.stack([originals, reconstruction.clamp(-1, 1)], dim=1).flatten(0, 1)

    # -- latent statistics in the checkpoint ------------------------------------------------------
    def _stats_loader(self) -> DataLoader:
        """A fixed random subset of the training set (the same at every checkpoint)."""
        dataset = self._dataset("train")
        count = min(self.stats_max_samples, len(dataset))
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))[:count]
        return DataLoader(Subset(dataset, indices.tolist()), batch_size=self.stats_batch_size, shuffle=False)

    def estimate_stats(self, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Latent stats of the network with the ``net.*`` weights of a module ``state_dict``."""
        net = copy.deepcopy(self.net)
        net.load_state_dict({k[len(NET_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(NET_PREFIX)})
        first_stage = KLFirstStage(net).to(self.device)
        # Datasets may draw random flips from the global RNG: keep training's RNG stream untouched.
        with torch.random.fork_rng(devices=[]):
            loader = self._stats_loader()
            shift, scale = estimate_latent_stats(first_stage, loader, self.stats_max_samples, self.per_channel_scale)
        return {
            "shift": shift.tolist(),
            "scale": scale.tolist(),
            "num_samples": min(self.stats_max_samples, len(loader.dataset)),
            "per_channel_scale": self.per_channel_scale,
        }

    def _cached_stats(self, which: str, state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
        if any(step != self.global_step for step, _ in self._stats_cache):
            self._stats_cache = {}  # weights moved on since
        key = (self.global_step, which)
        if key not in self._stats_cache:
            self._stats_cache[key] = self.estimate_stats(state_dict)
        return self._stats_cache[key]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Callbacks ran first: with EMA, state_dict holds the averaged weights and
        # current_model_state the raw ones.
        metadata: dict[str, Any] = {"config": self.run_config}
        metadata[STATS_KEY] = self._cached_stats("state_dict", checkpoint["state_dict"])
        if "current_model_state" in checkpoint:
            metadata[RAW_STATS_KEY] = self._cached_stats("current_model_state", checkpoint["current_model_state"])
        checkpoint[METADATA_KEY] = metadata


__all__ = ["AutoencoderModule", "psnr"]
