"""Whole and regional torch.compile give the eager network's outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from spectral_diffusion.networks import UNet
from spectral_diffusion.networks.compilation import compile_mode, compile_network


def tiny_sd_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(
        image_size=16, in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(8,), head_channels=8, downsample="wavelet_gated", upsample="wavelet_gated",
    )  # fmt: skip


def forward_backward(net: UNet) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([10, 900])
    net.zero_grad(set_to_none=True)
    out = net(x, t)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]


def compare(mode: str, backend: str, tolerance: float) -> None:
    eager = tiny_sd_unet().to(memory_format=torch.channels_last)
    with torch.no_grad():  # conv_out and the attention projections start at zero: give them weights
        for p in eager.parameters():
            p.add_(0.01 * torch.randn_like(p))
    reference, reference_grads = forward_backward(eager)
    compiled_names = compile_network(eager, mode, backend=backend)
    assert compiled_names and set(eager.state_dict()) == set(tiny_sd_unet().state_dict())  # keys unchanged
    out, grads = forward_backward(eager)
    torch.testing.assert_close(out, reference, rtol=tolerance, atol=tolerance)
    assert len(grads) == len(reference_grads)
    for g, r in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=tolerance, atol=tolerance)


def test_modes_are_named():
    assert [compile_mode(v) for v in (False, None, True, "regional", "WHOLE", "off")] == [
        "off", "off", "whole", "regional", "whole", "off",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="regional"):
        compile_mode("fast")


def test_regional_compilation_compiles_each_repeated_block():
    names = compile_network(tiny_sd_unet(), "regional", backend="eager")
    assert "down_levels.0.resample" in names and "up_levels.0.blocks.0.res" in names and "mid_attn" in names
    assert "" not in names and "conv_in" not in names


@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_compiled_graphs_equal_eager_in_fp32(mode):
    """aot_eager traces forward and backward through AOTAutograd as inductor does, without a C++ build."""
    compare(mode, "aot_eager", 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_inductor_equals_eager_in_fp32(mode):
    """The real backend: generated kernels reorder reductions, so within 1e-4."""
    compare(mode, "inductor", 1e-4)
