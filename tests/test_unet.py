"""The UNet backbone: shapes, conditioning, resampling plug-ins, and config errors."""

from __future__ import annotations

import pytest
import torch

from spectral_diffusion.networks import DOWNSAMPLERS, UPSAMPLERS, UNet
from spectral_diffusion.networks.layers import timestep_embedding

TINY = dict(image_size=16, in_channels=3, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, head_channels=8)


def randomize_zero_inits(net: UNet) -> UNet:
    """Give the zero-initialised output layers random weights, as training would."""
    torch.nn.init.normal_(net.conv_out.weight)
    for block in net.modules():
        for name in ("conv2", "proj"):
            if hasattr(block, name):
                torch.nn.init.normal_(getattr(block, name).weight, std=0.05)
    return net


def test_output_shape_and_zero_init():
    net = UNet(**TINY, attention_resolutions=(8,))
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([3, 700]))
    assert out.shape == x.shape
    # conv_out is zero-initialised, so an untrained network predicts exactly zero.
    assert torch.count_nonzero(out) == 0


def test_every_parameter_gets_a_gradient():
    net = randomize_zero_inits(UNet(**TINY, attention_resolutions=(16, 8), num_classes=4))
    net(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 3])).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_class_labels_change_the_output_and_null_label_is_default():
    torch.manual_seed(0)
    net = randomize_zero_inits(UNet(**TINY, num_classes=3))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    a, b = net(x, t, torch.tensor([0])), net(x, t, torch.tensor([1]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([3])))  # label 3 = "no class"


def test_labels_to_unconditional_net_are_rejected():
    with pytest.raises(ValueError, match="without num_classes"):
        UNet(**TINY)(torch.randn(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))


def test_attention_only_where_asked():
    net = UNet(**TINY, attention_resolutions=(8,))
    sizes_with_attention = []
    size = 16
    for level in net.down_levels:
        if any(b.attn is not None for b in level.blocks):
            sizes_with_attention.append(size)
        size //= 2
    assert sizes_with_attention == [8]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(attention_resolutions=(4,)), r"attention_resolutions \[4\] are not feature-map sizes"),
        (dict(image_size=18, channel_mult=(1, 2, 2)), "must be divisible by 2"),
        (dict(downsample="wavelet_magic"), "unknown downsample layer 'wavelet_magic'"),
        (dict(upsample="bilinear_magic"), "unknown upsample layer 'bilinear_magic'"),
        (dict(head_channels=12), "not divisible by head_channels=12"),
    ],
)
def test_bad_architecture_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**{**TINY, "attention_resolutions": (8,), **kwargs})


@pytest.mark.parametrize("down", sorted(DOWNSAMPLERS))
@pytest.mark.parametrize("up", sorted(UPSAMPLERS))
def test_every_resampling_layer_plugs_in(down, up):
    net = UNet(**TINY, downsample=down, upsample=up)
    assert net(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])).shape == (2, 3, 16, 16)


def test_timestep_embedding_known_values():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 4, max_period=10000.0)
    # frequencies 1 and 1e-2; cos first, then sin.
    expected = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0],
            [
                torch.cos(torch.tensor(1.0)),
                torch.cos(torch.tensor(0.01)),
                torch.sin(torch.tensor(1.0)),
                torch.sin(torch.tensor(0.01)),
            ],
        ]
    )
    torch.testing.assert_close(emb, expected)


def test_channels_last_gives_the_same_result():
    torch.manual_seed(0)
    net = randomize_zero_inits(UNet(**TINY, attention_resolutions=(8,)))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 50])
    reference = net(x, t)
    net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last), t), reference, rtol=1e-4, atol=1e-4)
