"""The torch DWT/IDWT against PyWavelets, and its behaviour under autograd, autocast, compile."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from spectral_diffusion.networks.wavelets import DWT2, IDWT2, dwt2, dwt2_stacked, idwt2, idwt2_stacked

WAVELETS = ["haar", "db2", "sym4", "coif1"]


def pywt_coeffs(x: np.ndarray, wavelet: str):
    ca, (ch, cv, cd) = pywt.dwt2(x, wavelet, mode="periodization", axes=(-2, -1))
    return [ca, ch, cv, cd]


@pytest.mark.parametrize("wavelet", WAVELETS + ["bior2.2", "db4"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_dwt_matches_pywt(wavelet, dtype, tol):
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 24))
    ca, (ch, cv, cd) = dwt2(torch.from_numpy(x).to(dtype), wavelet)
    for ours, ref in zip([ca, ch, cv, cd], pywt_coeffs(x, wavelet), strict=True):
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours.double().numpy(), ref, atol=tol, rtol=0)


@pytest.mark.parametrize("wavelet", WAVELETS + ["bior2.2"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_idwt_matches_pywt_on_arbitrary_coefficients(wavelet, dtype, tol):
    rng = np.random.default_rng(1)
    bands = [rng.standard_normal((2, 3, 8, 6)) for _ in range(4)]
    ref = pywt.idwt2((bands[0], tuple(bands[1:])), wavelet, mode="periodization", axes=(-2, -1))
    ours = idwt2(
        (torch.from_numpy(bands[0]).to(dtype), tuple(torch.from_numpy(b).to(dtype) for b in bands[1:])), wavelet
    )
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=tol, rtol=0)


def test_haar_known_values():
    # One 2x2 block a b / c d = 1 2 / 3 4.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    ca, (ch, cv, cd) = dwt2(x)
    assert [ca.item(), ch.item(), cv.item(), cd.item()] == [5.0, -2.0, -1.0, 0.0]


@pytest.mark.parametrize("wavelet", WAVELETS)
def test_perfect_reconstruction(wavelet):
    x = torch.randn(2, 4, 32, 16, dtype=torch.float64)
    torch.testing.assert_close(idwt2_stacked(dwt2_stacked(x, wavelet), wavelet), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_gradcheck(wavelet):
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: dwt2_stacked(t, wavelet), (x,))
    bands = torch.randn(1, 4, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b: idwt2_stacked(b, wavelet), (bands,))


@pytest.mark.parametrize("shape", [(1, 1, 15, 16), (1, 1, 16, 9)])
def test_odd_sizes_are_rejected_clearly(shape):
    with pytest.raises(ValueError, match=r"needs an even height and width; the input is \d+x\d+"):
        dwt2(torch.zeros(shape))


def test_unknown_wavelet_and_mode_are_named():
    with pytest.raises(ValueError, match="unknown wavelet 'wavey'"):
        DWT2("wavey")
    with pytest.raises(ValueError, match="unsupported DWT mode 'zero'"):
        dwt2(torch.zeros(1, 1, 4, 4), mode="zero")


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(wavelet, dtype):
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=dtype):
        bands = DWT2(wavelet)(x)
        rec = IDWT2(wavelet)(bands)
    assert torch.isfinite(rec).all()
    torch.testing.assert_close(rec.float(), x, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_channels_last(wavelet):
    x = torch.randn(2, 3, 16, 16)
    ref = dwt2_stacked(x, wavelet)
    out = dwt2_stacked(x.contiguous(memory_format=torch.channels_last), wavelet)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(idwt2_stacked(out, wavelet), x, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_torch_compile(wavelet):
    x = torch.randn(2, 3, 16, 16)

    def round_trip(t):
        return idwt2_stacked(dwt2_stacked(t, wavelet), wavelet)

    torch.testing.assert_close(torch.compile(round_trip)(x), x, atol=1e-5, rtol=0)
