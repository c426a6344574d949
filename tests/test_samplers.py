"""Per-sample seeding: a sample depends on its own generator only, not on the batch it is in."""

from __future__ import annotations

import pytest
import torch

from spectral_diffusion.diffusion import DDIMSampler, DDPMSampler, GaussianDiffusion, randn, sample


def toy_model(x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
    """Row-wise (no mixing across the batch), so batching can only matter through the noise."""
    return torch.tanh(x) * 0.5 + 0.01 * t.float().reshape(-1, *([1] * (x.ndim - 1))) / 1000


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize(
    "make_sampler",
    [
        lambda d: DDPMSampler(d, steps=20),
        lambda d: DDIMSampler(d, eta=1.0, steps=20),
    ],
    ids=["ddpm", "ddim_eta1"],
)
def test_per_sample_generators_make_samples_independent_of_the_batch(make_sampler):
    diffusion = GaussianDiffusion("linear")
    seeds = [11, 12, 13, 14, 15]
    batch = sample(toy_model, make_sampler(diffusion), (5, 1, 4, 4), generator=generators(seeds))
    for i, seed in enumerate(seeds):
        alone = sample(toy_model, make_sampler(diffusion), (1, 1, 4, 4), generator=generators([seed]))
        torch.testing.assert_close(alone[0], batch[i], rtol=0, atol=0)
    # The per-step noise really comes from the generators: other seeds give other samples.
    other = sample(toy_model, make_sampler(diffusion), (5, 1, 4, 4), generator=generators([1, 2, 3, 4, 5]))
    assert (other - batch).abs().amin(dim=(1, 2, 3)).gt(0).all()


def test_randn_rows_come_from_their_own_generator():
    rows = randn((3, 2, 5), generators([7, 8, 9]))
    for i, seed in enumerate([7, 8, 9]):
        expected = torch.randn((1, 2, 5), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(rows[i : i + 1], expected, rtol=0, atol=0)


def test_single_generator_is_unchanged():
    """A single generator still draws the whole batch at once (reproduces earlier seeds)."""
    expected = torch.randn((4, 3), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(randn((4, 3), torch.Generator().manual_seed(5)), expected, rtol=0, atol=0)


def test_generator_list_of_the_wrong_length_is_named():
    with pytest.raises(ValueError, match="list of 2 generators for a batch of 3"):
        randn((3, 4), generators([1, 2]))
