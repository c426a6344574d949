"""Per-sample Gaussian noise computed on the device from (seed, sample index, draw, element).

Seeded evaluation needs every sample's noise to depend on its own seed only, never on the batch it
lands in. One ``torch.Generator`` per sample gives that, but it draws on the CPU, row by row, then
copies to the accelerator: at batch 256 on a GPU that is hundreds of small CPU draws per sampler
step. :class:`CounterNoise` computes the same kind of stream in a few tensor ops on the sample's
device instead, as a counter-based generator does (Salmon et al. 2011, "Parallel random numbers:
as easy as 1, 2, 3"):

    bits(seed, index, draw, element) = mix(mix(mix(mix(seed) ^ index) ^ draw) ^ element)

where ``mix`` is a 32-bit integer finaliser (Wellons' "lowbias32", bias 0.17 of one bit), applied
with a different constant at each stage, ``draw`` counts the calls made for this batch (the initial
noise is draw 0, a stochastic sampler's step k is draw k + 1) and ``element`` is the position
inside the sample. Two 24-bit uniforms from elements ``2e`` and ``2e + 1`` give one normal by the
Box-Muller transform, in float64 (float32 where the device has no float64, e.g. MPS).

The integer stage is exact 32-bit arithmetic in int64 tensor ops (products split into 16-bit halves
so that nothing overflows), so the bits are identical on every device. The normals go through
``log``, ``sqrt`` and ``cos``, whose last bit may differ between CPU and CUDA libraries: on the same
device the noise is bitwise reproducible, across devices it agrees to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_MASK32 = 0xFFFFFFFF
#: Per-stage offsets (the golden ratio's bits and neighbours), so that mix(0) chains never stick at 0.
_STAGE = (0x9E3779B9, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1)


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``(x * constant) mod 2**32`` for int64 tensors holding 32-bit values, without int64 overflow."""
    low = (x & 0xFFFF) * constant
    high = ((x >> 16) * constant) & 0xFFFF
    return (low + (high << 16)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 integer finaliser on 32-bit values held in an int64 tensor."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _stage(x: torch.Tensor, stage: int) -> torch.Tensor:
    return mix32((x + _STAGE[stage]) & _MASK32)


def counter_bits(seed: int, indices: torch.Tensor, draw: int, elements: int) -> torch.Tensor:
    """``(len(indices), elements)`` 32-bit hashes (int64 tensor) of ``(seed, index, draw, element)``."""
    device = indices.device
    seed_hash = _stage(torch.tensor([seed & _MASK32], device=device, dtype=torch.int64), 0)
    seed_hash = _stage(seed_hash ^ ((seed >> 32) & _MASK32), 1)
    row = _stage(seed_hash ^ (indices.to(torch.int64) & _MASK32), 2)
    row = _stage(row ^ (draw & _MASK32), 3)  # (N,)
    element = torch.arange(elements, device=device, dtype=torch.int64)
    return _stage(row[:, None] ^ element[None, :], 4)


def counter_normal(
    seed: int, indices: torch.Tensor, draw: int, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normals of ``(len(indices), *shape)`` on ``indices.device``; row i is sample ``indices[i]``'s."""
    count = math.prod(shape)
    bits = counter_bits(seed, indices, draw, 2 * count)
    device = indices.device
    wide = torch.float32 if device.type == "mps" else torch.float64
    scale = 2.0**-24
    # u1 in (0, 1] so that log(u1) is finite; u2 in [0, 1)
    u1 = ((bits[:, 0::2] >> 8) + 1).to(wide) * scale
    u2 = (bits[:, 1::2] >> 8).to(wide) * scale
    normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return normal.to(dtype).reshape(len(indices), *shape)


class CounterNoise:
    """The noise of a batch of samples, each from its own (seed, index) stream, drawn on the device.

    Pass it wherever a sampler takes ``generator=``: every call of :meth:`randn` (the initial noise,
    then each stochastic step's) is the next draw of each row's stream. So sample ``i`` gets the same
    noise in any batch and on any number of ranks; :meth:`select` keeps that for a subset of rows.
    """

    def __init__(self, seed: int, indices: Sequence[int] | torch.Tensor, draw: int = 0) -> None:
        self.seed = int(seed)
        self.indices = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        self.draw = int(draw)

    def __len__(self) -> int:
        return len(self.indices)

    def randn(
        self, shape: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The next draw: normals of ``shape``, whose first dimension is this batch's."""
        if shape[0] != len(self.indices):
            raise ValueError(
                f"CounterNoise holds {len(self.indices)} sample streams but was asked for a batch of {shape[0]}"
            )
        noise = counter_normal(self.seed, self.indices.to(device), self.draw, tuple(shape[1:]), dtype)
        self.draw += 1
        return noise

    def select(self, rows: torch.Tensor | Sequence[int]) -> CounterNoise:
        """The streams of some rows (at the same draw), e.g. the samples that are still being refined."""
        return CounterNoise(self.seed, self.indices[torch.as_tensor(rows, dtype=torch.long)], self.draw)

    def __repr__(self) -> str:
        return f"CounterNoise(seed={self.seed}, samples={len(self.indices)}, draw={self.draw})"
