"""Compute cost: parameters and MACs of one forward pass.

GMACs are ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 / 1e9, the convention of the
diffusion papers (their "GFLOPs" are MACs). The counter sees convolutions, matmuls and SDPA
attention, not element-wise ops or norms. Every GMACs figure in this project comes from here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require gradients)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def gmacs_by_op(
    net: nn.Module,
    input_shape: tuple[int, ...],
    class_conditional: bool = False,
    device: torch.device | str | None = None,
    context_shape: tuple[int, int] | None = None,
) -> dict[str, float]:
    """GMACs of one forward pass of ``net`` on one sample of ``input_shape`` = (C, H, W), per aten op.

    Typically ``convolution`` and ``addmm``/``mm`` (linear layers) and ``bmm`` or
    ``_scaled_dot_product_*`` (the attention score and value products). ``context_shape`` =
    (tokens, width) counts a cross-attention network at that context length (without it, a
    network with ``context_dim`` is counted on its one-token null context).
    """
    device = device or next(net.parameters()).device
    x = torch.zeros(1, *input_shape, device=device)
    t = torch.full((1,), 500, device=device, dtype=torch.long)
    labels = torch.zeros(1, dtype=torch.long, device=device) if class_conditional else None
    context = {"context": torch.zeros(1, *context_shape, device=device)} if context_shape else {}
    was_training = net.training
    net.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            net(x, t, labels, **context)
    finally:
        net.train(was_training)
    return {str(op).removeprefix("aten."): flops / 2 / 1e9 for op, flops in counter.get_flop_counts()["Global"].items()}


def count_gmacs(
    net: nn.Module,
    input_shape: tuple[int, ...],
    class_conditional: bool = False,
    device: torch.device | str | None = None,
    context_shape: tuple[int, int] | None = None,
) -> float:
    """GMACs of one forward pass of ``net`` on a single sample of ``input_shape`` = (C, H, W)."""
    return sum(gmacs_by_op(net, input_shape, class_conditional, device, context_shape).values())


def attention_product_ops(by_op: dict[str, float]) -> float:
    """The part of :func:`gmacs_by_op` spent in attention's QK^T and AV products."""
    return sum(v for k, v in by_op.items() if k == "bmm" or "scaled_dot_product" in k)


@torch.no_grad()
def decoder_gmacs(
    first_stage: nn.Module, latent_shape: tuple[int, ...], device: torch.device | str | None = None
) -> float:
    """GMACs of the first stage's ``decode`` of one latent of ``latent_shape`` = (C, H, W)."""
    device = device or next(first_stage.parameters()).device
    with FlopCounterMode(display=False) as counter:
        first_stage.decode(torch.zeros(1, *latent_shape, device=device))
    return counter.get_total_flops() / 2 / 1e9


def network_calls_per_sample(steps: int, guidance: ClassifierFreeGuidance | float | None = None) -> int:
    """Forward passes of one sample over ``steps`` sampler steps.

    One per step; a classifier-free-guided step makes two (cond and uncond) unless its scale is
    0 or 1, and guidance truncation (``truncate_after``) leaves the later steps at one.
    """
    if guidance is None:
        return steps
    if not isinstance(guidance, ClassifierFreeGuidance):
        guidance = ClassifierFreeGuidance(scale=float(guidance))
    return guidance.network_evaluations(steps)
