"""Counter-based per-sample noise: Gaussian, independent of the batch, reproducible, and on the device."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from spectral_diffusion.diffusion.noise import CounterNoise, counter_bits, mix32

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_mix32_matches_a_plain_python_reference():
    """The int64 tensor ops reproduce exact 32-bit unsigned arithmetic (checked in Python integers)."""

    def reference(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [reference(v) for v in values]
    assert all(0 <= v <= 0xFFFFFFFF for v in got)


def test_the_noise_is_standard_normal_and_uncorrelated():
    z = CounterNoise(seed=123, indices=range(32)).randn((32, 4, 32, 32)).double()
    flat = z.flatten().numpy()
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01
    assert scipy.stats.kstest(flat, "norm").pvalue > 1e-3
    neighbours = np.corrcoef(z[..., :-1].flatten(), z[..., 1:].flatten())[0, 1]
    samples = np.corrcoef(z[:-1].flatten(), z[1:].flatten())[0, 1]
    assert abs(neighbours) < 0.01 and abs(samples) < 0.01


def test_a_sample_gets_the_same_noise_in_any_batch():
    whole = CounterNoise(7, range(8))
    first, second = whole.randn((8, 3, 5, 5)), whole.randn((8, 3, 5, 5))
    halves = [CounterNoise(7, range(0, 3)), CounterNoise(7, range(3, 8))]
    assert torch.equal(torch.cat([h.randn((len(h), 3, 5, 5)) for h in halves]), first)
    assert torch.equal(torch.cat([h.randn((len(h), 3, 5, 5)) for h in halves]), second)
    shuffled = CounterNoise(7, [5, 0, 2])
    assert torch.equal(shuffled.randn((3, 3, 5, 5)), first[[5, 0, 2]])
    assert torch.equal(
        whole.select([1, 6]).randn((2, 3, 5, 5)), CounterNoise(7, range(8), draw=2).randn((8, 3, 5, 5))[[1, 6]]
    )


def test_seeds_draws_and_samples_give_different_noise():
    base = CounterNoise(0, [0, 1]).randn((2, 64))
    assert not torch.equal(base[0], base[1])
    assert not torch.equal(CounterNoise(1, [0, 1]).randn((2, 64)), base)
    assert not torch.equal(CounterNoise(1 << 32, [0, 1]).randn((2, 64)), base)  # the seed's high bits count
    assert not torch.equal(CounterNoise(0, [0, 1], draw=1).randn((2, 64)), base)


@pytest.mark.parametrize("device", DEVICES)
def test_the_bits_are_exact_on_every_device_and_the_normals_agree(device):
    indices = torch.arange(4)
    reference_bits = counter_bits(3, indices, 0, 1000)
    assert torch.equal(counter_bits(3, indices.to(device), 0, 1000).cpu(), reference_bits)
    on_device = CounterNoise(3, range(4)).randn((4, 500), device=device)
    assert on_device.device.type == device
    torch.testing.assert_close(on_device.cpu(), CounterNoise(3, range(4)).randn((4, 500)), rtol=1e-6, atol=1e-6)


def test_dtypes_and_shape_errors():
    noise = CounterNoise(0, range(2))
    assert noise.randn((2, 3), dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="2 sample streams"):
        noise.randn((3, 3))


def tiny_bundle():
    from spectral_diffusion.bundles import ModelBundle
    from spectral_diffusion.diffusion.process import GaussianDiffusion
    from spectral_diffusion.networks import UNet

    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, head_channels=8)
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)
    return ModelBundle(net.eval(), GaussianDiffusion(), None, (1, 8, 8))


@pytest.mark.parametrize("kind", ["counter", "generators"])
def test_generated_samples_do_not_depend_on_the_batch(kind):
    """DDIM with eta=1 draws noise at every step: each sample still depends on its own stream only."""
    from spectral_diffusion.diffusion.samplers import DDIMSampler
    from spectral_diffusion.evaluation.generation import generate

    bundle = tiny_bundle()
    sampler = DDIMSampler(bundle.diffusion, steps=4, eta=1.0)

    def run(batch_size):
        return torch.cat([x for _, x in generate(bundle, sampler, range(5), 11, batch_size, "cpu", noise=kind)])

    whole, split = run(5), run(2)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    other_seed = torch.cat([x for _, x in generate(bundle, sampler, range(5), 12, 5, "cpu", noise=kind)])
    assert (other_seed - whole).abs().max() > 0.1


def test_unknown_noise_kinds_are_refused_before_sampling():
    from spectral_diffusion.diffusion.samplers import DDIMSampler
    from spectral_diffusion.evaluation.generation import generate

    bundle = tiny_bundle()
    with pytest.raises(ValueError, match="unknown noise='philox'"):
        next(generate(bundle, DDIMSampler(bundle.diffusion, steps=2), range(2), 0, 2, "cpu", noise="philox"))
