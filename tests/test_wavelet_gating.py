"""WG-Down and WG-Up: shapes, gate range, reduction to the plain transforms, UNet integration."""

from __future__ import annotations

import pytest
import torch

from spectral_diffusion.networks import UNet, WaveletGatedDownsample, WaveletGatedUpsample
from spectral_diffusion.networks.wavelets import dwt2_stacked, idwt2_stacked


@pytest.mark.parametrize("timestep_gates", [False, True])
def test_shapes_and_gate_range(timestep_gates):
    x, emb = torch.randn(2, 16, 8, 8), torch.randn(2, 32)
    down = WaveletGatedDownsample(16, 32, timestep_gates=timestep_gates)
    up = WaveletGatedUpsample(16, 32, timestep_gates=timestep_gates)
    assert down(x, emb).shape == (2, 16, 4, 4)
    assert up(x, emb).shape == (2, 16, 16, 16)
    for block in (down, up):
        gates = block.gates(x * 50, emb)  # large inputs push the sigmoid hard
        assert gates.shape == (2, 4, 16, 1, 1)
        assert (gates > 0).all() and (gates < 1).all()


def test_gates_depend_on_the_input_and_optionally_the_timestep():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    plain = WaveletGatedDownsample(16, 32)
    assert not torch.allclose(plain.gates(x)[0], plain.gates(x)[1])
    conditioned = WaveletGatedDownsample(16, 32, timestep_gates=True)
    same_x = x[:1].expand(2, -1, -1, -1)
    assert not torch.allclose(*conditioned.gates(same_x, torch.randn(2, 32)).unbind(0))
    with pytest.raises(ValueError, match="no embedding was given"):
        conditioned(x)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_unit_gates_reduce_to_the_plain_transforms(wavelet):
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    ones = torch.ones(2, 4, 8, 1, 1, dtype=torch.float64)
    down = WaveletGatedDownsample(8, 16, wavelet=wavelet).double()
    torch.testing.assert_close(down(x, gates=ones), dwt2_stacked(x, wavelet).sum(1))
    up = WaveletGatedUpsample(8, 16, wavelet=wavelet).double()
    bands = up.proj(x).unflatten(1, (4, 8))
    torch.testing.assert_close(up(x, gates=ones), idwt2_stacked(bands, wavelet))


def test_gates_weigh_each_band():
    """A gate of 1 on one band and 0 on the others passes exactly that band."""
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    down = WaveletGatedDownsample(4, 8).double()
    bands = dwt2_stacked(x)
    for band in range(4):
        gates = torch.zeros(1, 4, 4, 1, 1, dtype=torch.float64)
        gates[:, band] = 1
        torch.testing.assert_close(down(x, gates=gates), bands[:, band])


def test_unet_with_wavelet_gating_trains():
    torch.manual_seed(0)
    net = UNet(
        16,
        3,
        16,
        (1, 2),
        1,
        (8,),
        head_channels=8,
        downsample="wavelet_gated",
        upsample="wavelet_gated",
        downsample_options={"wavelet": "db2", "reduction": 2},
        upsample_options={"wavelet": "haar", "timestep_gates": True},
    )
    assert isinstance(net.down_levels[0].resample, WaveletGatedDownsample)
    assert net.down_levels[0].resample.dwt.wavelet == "db2"
    assert isinstance(net.up_levels[0].resample, WaveletGatedUpsample)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, t = torch.randn(4, 3, 16, 16), torch.randint(0, 1000, (4,))
    target = torch.randn(4, 3, 16, 16)
    losses = []
    for _ in range(5):
        loss = (net(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert net.up_levels[0].resample.gate.emb_proj.weight.grad is not None


def test_bad_resample_options_are_named():
    with pytest.raises(ValueError, match="bad downsample_options"):
        UNet(16, 3, 16, (1, 2), 1, downsample="conv", downsample_options={"wavelet": "haar"})
