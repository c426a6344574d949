"""Random numbers for data augmentation: keyed by (seed, epoch, index) in training, per process otherwise.

**Training** (the resumable loader, ``data/resumable_sampler.py``): the sampler yields each
index as an :class:`AugmentationKey`, an ``int`` that also carries the run's seed and the epoch.
A dataset that passes the index it was given to :meth:`WorkerRandom.generator` (or ``coin``) gets
a generator seeded from ``(seed, epoch, index)`` alone, a counter-based draw with no state. So an
image's flips in an epoch are the same whichever worker loads it, however the batches are split
over devices and accumulation, and after a resume whose loader starts mid-epoch with other worker
seeds. Nothing but the key has to reach the worker processes, so persistent workers keep working.

**Any other index** (a plain ``int``: validation loaders, scripts, ``dataset[i]``) draws from a
generator private to the current process, as before the keys existed:

- in a DataLoader worker it is seeded with that worker's seed (``get_worker_info().seed``:
  torch's base seed for the epoch plus the worker id, so it follows ``seed_everything``);
- in the main process with ``torch.initial_seed()``.

It is not torch's global generator: with ``num_workers=0`` that would consume the training
process's random stream, and a generator created before the loader forks would be copied into
every worker, which would then all flip the same images. A process that finds a generator made by
another process (after a fork) makes its own.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from spectral_diffusion.data.resumable_sampler import AugmentationKey

__all__ = ["AugmentationKey", "WorkerRandom", "keyed_generator"]

#: Separates the augmentation draws from other uses of (seed, epoch) (the data order, say).
AUGMENTATION_STREAM = 0x41554721  # "AUG!"


def keyed_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A fresh generator whose draws are a pure function of ``(seed, epoch, index)``.

    ``SeedSequence`` hashes its inputs into well-mixed state, so neighbouring indices and epochs
    give unrelated draws. ``seed`` (any 64-bit value) is the entropy, padded to a fixed width when
    there is a spawn key; the spawn key is the stream tag, the epoch and the index (one 32-bit word
    each below 2**32), so no two triples are hashed from the same words.
    """
    if index < 0 or epoch < 0:
        raise ValueError(f"augmentation keys need index >= 0 and epoch >= 0, got index={index}, epoch={epoch}")
    words = np.random.SeedSequence(
        int(seed) & 0xFFFF_FFFF_FFFF_FFFF, spawn_key=(AUGMENTATION_STREAM, int(epoch), int(index))
    ).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


class WorkerRandom:
    """Random draws for augmentation: keyed by an :class:`AugmentationKey`, else per process (module doc)."""

    def __init__(self) -> None:
        self._generator: torch.Generator | None = None
        self._pid: int | None = None

    def generator(self, key: int | None = None) -> torch.Generator:
        """The generator for the sample ``key``: its own if ``key`` is an :class:`AugmentationKey`.

        Otherwise this process's generator, created and seeded on first use. A dataset making
        several random choices for one sample takes them all from one keyed generator.
        """
        if isinstance(key, AugmentationKey):
            return keyed_generator(key.seed, key.epoch, int(key))
        pid = os.getpid()
        if self._generator is None or self._pid != pid:
            info = get_worker_info()
            seed = info.seed if info is not None else torch.initial_seed()
            self._generator = torch.Generator().manual_seed(seed)
            self._pid = pid
        return self._generator

    def coin(self, p: float = 0.5, key: int | None = None) -> bool:
        """True with probability ``p``; a pure function of ``key`` when it is an :class:`AugmentationKey`."""
        return bool(torch.rand((), generator=self.generator(key)) < p)

    def __getstate__(self) -> dict[str, Any]:
        # A worker started by spawn/forkserver receives a pickled copy: it must seed its own.
        return {"_generator": None, "_pid": None}
