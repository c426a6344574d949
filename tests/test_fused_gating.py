"""The fused Haar wavelet gating equals the unfused DWT/IDWT path, forward and backward, fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spectral_diffusion.networks.haar_gating import haar_gated_downsample, haar_gated_upsample
from spectral_diffusion.networks.wavelet_gating import WaveletGatedDownsample, WaveletGatedUpsample
from spectral_diffusion.networks.wavelets import dwt2_stacked, idwt2_stacked

LAYOUTS = [torch.contiguous_format, torch.channels_last]
#: Largest difference allowed between the fused and unfused results: float64 exact to rounding;
#: bf16 both paths round their intermediates (8 mantissa bits), relative to the output's scale.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 3e-2}


def unfused_down(x, gates):
    return (gates * dwt2_stacked(x)).sum(dim=1)


def unfused_up(x, gates, weight, bias):
    return idwt2_stacked(gates * F.conv2d(x, weight, bias).unflatten(1, (4, x.shape[1])))


def inputs(dtype, layout, seed=0, channels=6, size=(8, 12)):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, channels, *size, generator=generator, dtype=torch.float64)
    gates = torch.rand(3, 4, channels, 1, 1, generator=generator, dtype=torch.float64)
    weight = torch.randn(4 * channels, channels, 1, 1, generator=generator, dtype=torch.float64) / channels**0.5
    bias = torch.randn(4 * channels, generator=generator, dtype=torch.float64)
    x = x.to(dtype).contiguous(memory_format=layout)
    return x, gates.to(dtype), weight.to(dtype), bias.to(dtype)


def scaled_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30)).item()


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_downsample_equals_gated_dwt_bands(dtype, layout):
    x, gates, _, _ = inputs(dtype, layout)
    fused = haar_gated_downsample(x, gates)
    assert fused.shape == (3, 6, 4, 6) and fused.dtype == dtype
    assert fused.is_contiguous(memory_format=layout)
    assert scaled_error(fused, unfused_down(x, gates)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_fused_upsample_equals_projection_gates_and_idwt(dtype, layout):
    x, gates, weight, bias = inputs(dtype, layout)
    fused = haar_gated_upsample(x, gates, weight, bias)
    assert fused.shape == (3, 6, 16, 24) and fused.dtype == dtype
    assert fused.is_contiguous(memory_format=layout)
    assert scaled_error(fused, unfused_up(x, gates, weight, bias)) <= TOLERANCE[dtype]
    no_bias = haar_gated_upsample(x, gates, weight, None)
    assert scaled_error(no_bias, unfused_up(x, gates, weight, None)) <= TOLERANCE[dtype]


def test_hand_computed_block():
    """One 2x2 block a b / c d with gates (1, 0, 0, 0) is the Haar LL band (a+b+c+d)/2, and gates on
    the diagonal band alone give (a-b-c+d)/2."""
    x = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    ll = torch.tensor([1.0, 0, 0, 0]).reshape(1, 4, 1, 1, 1)
    hh = torch.tensor([0, 0, 0, 1.0]).reshape(1, 4, 1, 1, 1)
    assert haar_gated_downsample(x, ll).item() == pytest.approx(5.5)
    assert haar_gated_downsample(x, hh).item() == pytest.approx(0.5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_equal_the_unfused_path(layout):
    x, gates, weight, bias = inputs(torch.float64, layout, seed=1)
    leaves = [t.clone().requires_grad_() for t in (x, gates, weight, bias)]
    twins = [t.clone().requires_grad_() for t in (x, gates, weight, bias)]
    cotangent_down = torch.randn(3, 6, 4, 6, dtype=torch.float64)
    cotangent_up = torch.randn(3, 6, 16, 24, dtype=torch.float64)

    def loss(down, up, args):
        return (down(*args[:2]) * cotangent_down).sum() + (up(*args) * cotangent_up).sum()

    loss(haar_gated_downsample, haar_gated_upsample, leaves).backward()
    loss(unfused_down, unfused_up, twins).backward()
    for fused, reference in zip(leaves, twins, strict=True):
        torch.testing.assert_close(fused.grad, reference.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer_class", [WaveletGatedDownsample, WaveletGatedUpsample])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layers_take_the_fused_path_for_haar_and_match_the_reference(layer_class, dtype):
    torch.manual_seed(0)
    layer = layer_class(16, 32).to(dtype)
    assert layer.fused  # Haar: the default path is the fused one
    x = torch.randn(2, 16, 8, 8, dtype=dtype).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 32, dtype=dtype)
    fused = layer(x, emb)
    layer.fused = False
    reference = layer(x, emb)
    assert scaled_error(fused, reference) <= TOLERANCE[dtype]


def test_other_wavelets_keep_the_general_path():
    layer = WaveletGatedDownsample(8, 16, wavelet="db2")
    assert not layer.fused
    with pytest.raises(ValueError, match="Haar"):
        layer.fused = True


def test_uniform_gates_make_wg_down_a_subsampling_and_lowpass_gates_an_average_pool():
    """Why ``gate_init=lowpass`` exists: with equal gates the four orthonormal Haar bands sum to twice
    the top-left pixel of each 2x2 block (plain subsampling); the low-pass start is, by PyWavelets'
    own bands, sigmoid(4) LL + sigmoid(-4) (LH + HL + HH), and LL is twice the 2x2 average."""
    pywt = pytest.importorskip("pywt")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    equal = torch.full((2, 4, 3, 1, 1), 0.5, dtype=torch.float64)
    assert torch.allclose(haar_gated_downsample(x, equal), x[..., ::2, ::2], atol=1e-12)

    layer = WaveletGatedDownsample(3, 16, gate_init="lowpass").double()
    gates = layer.gates(x)
    assert torch.allclose(gates[:, 0], torch.sigmoid(torch.tensor(4.0, dtype=torch.float64)).expand_as(gates[:, 0]))
    assert torch.allclose(gates[:, 1:], torch.sigmoid(torch.tensor(-4.0, dtype=torch.float64)).expand_as(gates[:, 1:]))
    cA, (cH, cV, cD) = pywt.dwt2(x.numpy(), "haar", axes=(-2, -1))
    expected = torch.sigmoid(torch.tensor(4.0)).item() * cA + torch.sigmoid(torch.tensor(-4.0)).item() * (cH + cV + cD)
    assert torch.allclose(layer(x), torch.from_numpy(expected), atol=1e-12)
    assert torch.allclose(torch.from_numpy(cA), 2 * F.avg_pool2d(x, 2), atol=1e-12)

    up = WaveletGatedUpsample(3, 16, gate_init="lowpass").double()
    ll, lh, hl, hh = up.proj(x).detach().unflatten(1, (4, 3)).unbind(1)
    g_ll, g_detail = torch.sigmoid(torch.tensor(4.0)).item(), torch.sigmoid(torch.tensor(-4.0)).item()
    expected = pywt.idwt2(
        (g_ll * ll.numpy(), (g_detail * lh.numpy(), g_detail * hl.numpy(), g_detail * hh.numpy())),
        "haar",
        axes=(-2, -1),
    )
    assert torch.allclose(up(x), torch.from_numpy(expected), atol=1e-12)
    zero = torch.zeros_like(ll).numpy()
    ll_only = pywt.idwt2((ll.numpy(), (zero, zero, zero)), "haar", axes=(-2, -1))  # the LL part: nearest, halved
    assert torch.allclose(torch.from_numpy(ll_only), 0.5 * F.interpolate(ll, scale_factor=2), atol=1e-12)
    with pytest.raises(ValueError, match="gate_init must be one of"):
        WaveletGatedDownsample(3, 16, gate_init="open")
