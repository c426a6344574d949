"""Compute cost: parameters and MACs of one forward pass.

GMACs are ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 / 1e9, the convention of the
diffusion papers (their "GFLOPs" are MACs). The counter sees convolutions, matmuls and SDPA
attention, not element-wise ops or norms. Every GMACs figure in this project comes from here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require gradients)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_gmacs(
    net: nn.Module,
    input_shape: tuple[int, ...],
    class_conditional: bool = False,
    device: torch.device | str | None = None,
) -> float:
    """GMACs of one forward pass of ``net`` on a single sample of ``input_shape`` = (C, H, W)."""
    device = device or next(net.parameters()).device
    x = torch.zeros(1, *input_shape, device=device)
    t = torch.full((1,), 500, device=device, dtype=torch.long)
    labels = torch.zeros(1, dtype=torch.long, device=device) if class_conditional else None
    was_training = net.training
    net.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            net(x, t, labels)
    finally:
        net.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
