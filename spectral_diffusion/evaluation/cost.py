"""Compute cost: parameters and MACs of one forward pass.

GMACs are multiply-accumulates / 1e9, the convention of the diffusion papers (their "GFLOPs" are
MACs). Convolutions and matmuls are read from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs
/ 2). Attention's QK^T and AV products are counted here, from the shapes of every
``F.scaled_dot_product_attention`` call: which SDPA kernels ``FlopCounterMode`` sees differs between
torch releases and memory formats (torch 2.14 counts the math kernel's ``bmm`` but not the CPU flash
kernel), and a reported GMACs figure must not. Element-wise ops and norms are not counted. Every
GMACs figure in this project comes from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance

#: The key of :func:`gmacs_by_op` that holds the attention products counted from SDPA's shapes.
ATTENTION_KEY = "attention_products"


class _CountAttentionProducts(TorchFunctionMode):
    """Replaces every ``scaled_dot_product_attention`` call by its analytic cost.

    ``softmax(Q K^T) V`` with Q of (..., L, E), K of (..., S, E) and V of (..., S, Ev) costs
    L*S*E MACs for the scores and L*S*Ev for the values, per batch and head. The call returns zeros
    of the output's shape instead of running a kernel, so no release-specific kernel reaches the
    dispatch-level counter; a cost count never reads the values.
    """

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("query", "key", "value")
        q, k, v = (args[i] if i < len(args) else kwargs[name] for i, name in enumerate(names))
        batch_heads = math.prod(q.shape[:-2])  # grouped-query attention shares K/V, not the products
        length, source = q.shape[-2], k.shape[-2]
        self.macs += batch_heads * length * source * (q.shape[-1] + v.shape[-1])
        return q.new_zeros(*q.shape[:-1], v.shape[-1])


@torch.no_grad()
def _macs_by_op(forward: Callable[[], Any]) -> dict[str, float]:
    """GMACs of running ``forward()``, per aten op, with attention products under :data:`ATTENTION_KEY`."""
    attention = _CountAttentionProducts()
    with FlopCounterMode(display=False) as counter, attention:
        forward()
    by_op = {
        str(op).removeprefix("aten."): flops / 2 / 1e9
        for op, flops in counter.get_flop_counts().get("Global", {}).items()
    }
    if attention.macs:
        by_op[ATTENTION_KEY] = attention.macs / 1e9
    return by_op


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require gradients)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def gmacs_by_op(
    net: nn.Module,
    input_shape: tuple[int, ...],
    class_conditional: bool = False,
    device: torch.device | str | None = None,
    context_shape: tuple[int, int] | None = None,
) -> dict[str, float]:
    """GMACs of one forward pass of ``net`` on one sample of ``input_shape`` = (C, H, W), per op.

    Typically ``convolution`` and ``addmm``/``mm`` (linear layers) from the dispatch-level counter,
    and :data:`ATTENTION_KEY` (the attention score and value products). ``net`` is called as
    ``net(x, t, labels)``, as this framework's UNets and diffusers' ``UNet2DModel`` are.
    ``context_shape`` = (tokens, width) counts a cross-attention network at that context length
    (without it, a network with ``context_dim`` is counted on its one-token null context).
    """
    device = device or next(net.parameters()).device
    x = torch.zeros(1, *input_shape, device=device)
    t = torch.full((1,), 500, device=device, dtype=torch.long)
    labels = torch.zeros(1, dtype=torch.long, device=device) if class_conditional else None
    context = {"context": torch.zeros(1, *context_shape, device=device)} if context_shape else {}
    was_training = net.training
    net.eval()
    try:
        return _macs_by_op(lambda: net(x, t, labels, **context))
    finally:
        net.train(was_training)


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
    """The part of :func:`gmacs_by_op` spent in attention's QK^T and AV products.

    Attention written with explicit batched matmuls instead of SDPA shows up as ``bmm``/``baddbmm``.
    """
    return sum(v for k, v in by_op.items() if k in (ATTENTION_KEY, "bmm", "baddbmm"))


def decoder_gmacs(
    first_stage: nn.Module, latent_shape: tuple[int, ...], device: torch.device | str | None = None
) -> float:
    """GMACs of the first stage's ``decode`` of one latent of ``latent_shape`` = (C, H, W)."""
    device = device or next(first_stage.parameters()).device
    return sum(_macs_by_op(lambda: first_stage.decode(torch.zeros(1, *latent_shape, device=device))).values())


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
