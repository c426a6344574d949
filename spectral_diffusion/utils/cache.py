"""The per-user cache directory: files the framework makes once and reuses across runs and clones.

It holds derived artefacts that are expensive to make and cheap to keep, such as the weights of
the offline Fashion-MNIST feature extractor (``evaluation/fmnist_weights.py``). Its location:

1. ``$SPECTRAL_DIFFUSION_CACHE``, if set (e.g. a shared file system, so every node of a cluster
   reads the same files);
2. else ``$XDG_CACHE_HOME/spectral_diffusion``;
3. else ``~/.cache/spectral_diffusion``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that overrides the cache location.
CACHE_ENV = "SPECTRAL_DIFFUSION_CACHE"


def user_cache_dir() -> Path:
    """The cache directory (module doc). It is only named here, not created."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    # XDG says a relative XDG_CACHE_HOME is invalid and must be ignored.
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "spectral_diffusion"
    return Path.home() / ".cache" / "spectral_diffusion"
