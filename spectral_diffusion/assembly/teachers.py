"""Frozen teachers for distillation (``teacher=checkpoint`` and ``teacher=diffusers``), through the one loader."""

from __future__ import annotations

from pathlib import Path

import torch

from spectral_diffusion.assembly.load import load_run
from spectral_diffusion.bundles import load_diffusers_bundle
from spectral_diffusion.teachers import Teacher


def checkpoint_teacher(ckpt_path: str, use_ema: bool = True, torch_dtype: str | None = None) -> Teacher:
    """A ``train.py`` checkpoint (e.g. an ``ldm_*`` or ``fmnist_base`` run) as a teacher, EMA weights by default.

    Its network, diffusion process and first stage are rebuilt from the checked stored config
    (``load.py: load_run``). ``torch_dtype`` (e.g. ``bfloat16``) keeps the teacher's network in that
    dtype: half the memory and, on GPUs, faster forward passes; it still answers in the student's dtype.
    """
    if Path(ckpt_path).expanduser().is_dir():
        raise ValueError(
            f"teacher.ckpt_path={ckpt_path} is a directory; for a diffusers model use teacher=diffusers "
            f"teacher.path={ckpt_path}"
        )
    bundle = load_run(ckpt_path, use_ema=use_ema)
    if torch_dtype:
        dtype = getattr(torch, str(torch_dtype), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"teacher.torch_dtype={torch_dtype!r} is not a floating torch dtype; use e.g. bfloat16")
        bundle.network.to(dtype)
    return Teacher(bundle)


def diffusers_teacher(
    path: str,
    autoencoder: bool = True,
    latent_scaling_factor: float | None = None,
    torch_dtype: str | None = None,
) -> Teacher:
    """A diffusers UNet2DModel folder or hub id as a teacher, with its scheduler and (if present) autoencoder.

    See ``bundles/diffusers_folder.py`` for the layout and what is checked before anything loads.
    """
    return Teacher(load_diffusers_bundle(path, autoencoder, latent_scaling_factor, torch_dtype))
