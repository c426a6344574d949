"""Checks that need CUDA: run with ``python -m pytest -m gpu`` on a GPU machine (skipped elsewhere).

They cover what the CPU suite cannot: bf16 autocast, ``torch.compile`` of the network, and that
a seeded sample does not depend on the device it is generated on.
"""

from __future__ import annotations

import pytest
import torch

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.diffusion.samplers import DDIMSampler, DPMSolverPlusPlusSampler, sample
from spectral_diffusion.networks.unet import UNet

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def wavelet_gated_unet(**kwargs) -> UNet:
    options = dict(
        image_size=32,
        in_channels=3,
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        downsample="wavelet_gated",
        upsample="wavelet_gated",
        num_classes=10,
    )
    options.update(kwargs)
    torch.manual_seed(0)
    net = UNet(**options)
    # The output convolution starts at zero; give it weights so that outputs differ between inputs.
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)
    return net


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_cuda_forward_matches_cpu_in_float32():
    net = wavelet_gated_unet().eval()
    x = torch.randn(4, 3, 32, 32)
    t = torch.tensor([0, 10, 500, 999])
    labels = torch.tensor([0, 3, 9, 10])
    with torch.no_grad():
        expected = net(x, t, labels)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        got = net.cuda()(x.cuda(), t.cuda(), labels.cuda()).cpu()
    assert relative_error(got, expected) < 1e-4


def test_bf16_autocast_training_step_is_close_to_float32():
    net = wavelet_gated_unet().cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    t = torch.randint(0, 1000, (8,), device="cuda")
    target = torch.randn_like(x)
    with torch.no_grad():
        full = net(x, t)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = net(x, t)
    assert half.dtype == torch.bfloat16
    # bf16 has an 8-bit mantissa: about 1e-2 relative error after a whole UNet.
    assert relative_error(half, full) < 3e-2
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.mse_loss(net(x, t).float(), target)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_compiled_network_matches_eager():
    net = wavelet_gated_unet().cuda().eval()
    compiled = torch.compile(net)
    x = torch.randn(4, 3, 32, 32, device="cuda")
    t = torch.tensor([1, 100, 600, 999], device="cuda")
    labels = torch.tensor([1, 2, 3, 10], device="cuda")
    with torch.no_grad():
        assert relative_error(compiled(x, t, labels), net(x, t, labels)) < 1e-3


@pytest.mark.parametrize("sampler_cls", [DDIMSampler, DPMSolverPlusPlusSampler])
def test_seeded_samples_do_not_depend_on_the_device(sampler_cls):
    # The noise is drawn on the CPU generators, so CPU and CUDA runs start from the same numbers.
    net = wavelet_gated_unet(num_classes=None).eval()
    diffusion = GaussianDiffusion()
    kwargs = {"eta": 1.0} if sampler_cls is DDIMSampler else {}
    sampler = sampler_cls(diffusion, steps=10, **kwargs)
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    on_cpu = sample(net, sampler, (3, 3, 32, 32), generators, "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    on_cuda = sample(net.cuda(), sampler, (3, 3, 32, 32), generators, "cuda").cpu()
    assert relative_error(on_cuda, on_cpu) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_wavelet_gating_on_cuda_equals_the_reference_path(dtype):
    from spectral_diffusion.networks.wavelet_gating import WaveletGatedDownsample, WaveletGatedUpsample

    tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    for layer_class in (WaveletGatedDownsample, WaveletGatedUpsample):
        torch.manual_seed(0)
        layer = layer_class(32, 64).cuda().to(dtype)
        x = torch.randn(4, 32, 16, 16, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
        emb = torch.randn(4, 64, device="cuda", dtype=dtype)
        fused = layer(x, emb)
        layer.fused = False
        reference = layer(x, emb)
        scale = reference.abs().max()
        assert ((fused - reference).abs().max() / scale).item() <= tolerance


@pytest.mark.parametrize("mode", ["whole", "regional"])
def test_compiled_network_on_cuda_equals_eager_in_bf16(mode):
    from spectral_diffusion.networks.compilation import compile_network

    net = wavelet_gated_unet(num_classes=None).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (8,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        eager = net(x, t).float()
        compile_network(net, mode)
        compiled = net(x, t).float()
    assert ((compiled - eager).abs().max() / eager.abs().max()).item() < 3e-2


def test_counter_noise_is_drawn_on_the_gpu_and_matches_the_cpu_stream():
    from spectral_diffusion.diffusion.noise import CounterNoise, counter_bits

    indices = torch.arange(256)
    assert torch.equal(counter_bits(5, indices.cuda(), 3, 4096).cpu(), counter_bits(5, indices, 3, 4096))
    on_gpu = CounterNoise(5, range(256), draw=3).randn((256, 4, 32, 32), device="cuda")
    on_cpu = CounterNoise(5, range(256), draw=3).randn((256, 4, 32, 32))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-6, atol=1e-6)
