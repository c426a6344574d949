"""Per-process random numbers for data augmentation, seeded from torch's worker seed.

A dataset that draws its random flips from the global torch RNG would, with ``num_workers=0``,
consume the training process's random stream, and a generator created before the loader forks
would be copied into every worker, which would then all flip the same images. ``WorkerRandom``
instead owns one ``torch.Generator`` per process:

- in a DataLoader worker it is seeded with that worker's seed (``get_worker_info().seed``:
  torch's base seed for the epoch plus the worker id, so it follows ``seed_everything``);
- in the main process with ``torch.initial_seed()``.

A process that finds a generator made by another process (after a fork) makes its own.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import get_worker_info


class WorkerRandom:
    """Coin flips from a generator private to the current process (see module doc)."""

    def __init__(self) -> None:
        self._generator: torch.Generator | None = None
        self._pid: int | None = None

    def generator(self) -> torch.Generator:
        """This process's generator, created and seeded on first use."""
        pid = os.getpid()
        if self._generator is None or self._pid != pid:
            info = get_worker_info()
            seed = info.seed if info is not None else torch.initial_seed()
            self._generator = torch.Generator().manual_seed(seed)
            self._pid = pid
        return self._generator

    def coin(self, p: float = 0.5) -> bool:
        """True with probability ``p``."""
        return bool(torch.rand((), generator=self.generator()) < p)

    def __getstate__(self) -> dict[str, Any]:
        # A worker started by spawn/forkserver receives a pickled copy: it must seed its own.
        return {"_generator": None, "_pid": None}
