"""Seeded, batched sample generation whose result depends on neither batch size nor GPU count.

Sample ``i`` draws its initial noise and all of its sampler noise from its own stream, and a
class-conditional model gets label ``i % num_classes``. Which batch, or which rank, sample ``i``
lands in therefore changes nothing but float rounding in the network. Two kinds of stream
(``noise=``):

- ``counter`` (the default): :class:`CounterNoise` of ``(seed, i)``, computed on the sampling
  device in a few tensor ops, so drawing costs nothing next to the network even at large batches;
- ``generators``: ``torch.Generator().manual_seed(seed + i)`` on the CPU, one row at a time (what
  diffusers' ``randn_tensor`` does with a list of generators), then copied to the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance
from spectral_diffusion.diffusion.noise import CounterNoise
from spectral_diffusion.diffusion.samplers import Generators, Sampler, sample

#: The per-sample noise streams ``noise=`` may name (see the module docstring).
NOISE_KINDS = ("counter", "generators")


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded ``seed + i``."""
    return [torch.Generator().manual_seed(seed + int(i)) for i in indices]


def sample_noise(seed: int, indices: Sequence[int], kind: str = "counter") -> Generators:
    """The per-sample noise streams of samples ``indices``: ``counter`` or ``generators``."""
    if kind == "counter":
        return CounterNoise(seed, [int(i) for i in indices])
    if kind == "generators":
        return sample_generators(seed, indices)
    raise ValueError(f"unknown noise={kind!r}; choose one of {list(NOISE_KINDS)}")


def describe_noise(kind: str) -> str:
    """How sample i's noise is drawn, for the protocol record of metrics.json."""
    if kind == "counter":
        return "sample i: CounterNoise(seed, i) on the sampling device for its initial and sampler noise"
    sample_noise(0, [], kind)  # refuses unknown kinds
    return "sample i: torch.Generator().manual_seed(seed + i) on the CPU for its initial and sampler noise"


def sample_labels(indices: Sequence[int], num_classes: int | None) -> torch.Tensor | None:
    """Class label ``i % num_classes`` of sample ``i`` (``None`` for unconditional models)."""
    if num_classes is None:
        return None
    return torch.tensor([int(i) % num_classes for i in indices], dtype=torch.long)


def guidance_kwargs(guidance: ClassifierFreeGuidance | float | None, model: ModelBundle) -> dict:
    """Keyword arguments that switch on classifier-free guidance in :func:`sample` (none at scale 1)."""
    if guidance is None:
        return {}
    if not isinstance(guidance, ClassifierFreeGuidance):
        guidance = ClassifierFreeGuidance(scale=float(guidance))
    if guidance.scale == 1.0:
        return {}  # plain conditional sampling: one call per step
    if not model.class_conditional:
        raise ValueError(
            f"guidance.scale={guidance.scale} needs a class-conditional model; {model.source or 'this model'} is "
            "unconditional (use guidance.scale=1)"
        )
    return {"guidance": guidance}


@torch.no_grad()
def generate(
    model: ModelBundle,
    sampler: Sampler,
    indices: Sequence[int],
    seed: int,
    batch_size: int,
    device: torch.device | str,
    guidance: ClassifierFreeGuidance | float | None = None,
    decode: bool = True,
    noise: str = "counter",
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, samples)`` batches of at most ``batch_size`` for the given sample indices.

    Samples are decoded by the first stage (``decode``) into images nominally in [-1, 1].
    ``guidance`` (a :class:`ClassifierFreeGuidance` or a scale) applies to class-conditional models.
    ``noise`` picks the per-sample noise streams (:data:`NOISE_KINDS`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    extra = guidance_kwargs(guidance, model)
    sample_noise(seed, [], noise)  # an unknown kind fails before any sampling
    indices = [int(i) for i in indices]
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        labels = sample_labels(chunk, model.num_classes)
        latents = sample(
            model.network,
            sampler,
            (len(chunk), *model.shape),
            sample_noise(seed, chunk, noise),
            device,
            class_labels=None if labels is None else labels.to(device),
            **extra,
        )
        yield chunk, model.decode(latents) if decode else latents
