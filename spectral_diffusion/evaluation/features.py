"""Features of a stream of images: float64 Fréchet statistics, and (for KID) the features themselves.

Images arrive as ``(indices, images in [-1, 1])`` batches, from a data set or from generation.
They are quantised to uint8 first, as a saved PNG would be, so generated and real images reach
the extractor in the same form: real images by rounding (exact for images that came from uint8),
generated ones by rounding or, to re-measure a published LDM/ADM number, by truncation
(``quantize=truncate``, as their sampling scripts save samples). Across ranks, :func:`combine_ranks` merges the statistics exactly
and gathers the features in index order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from spectral_diffusion.evaluation.distributed import gather_features, merge_statistics
from spectral_diffusion.evaluation.frechet import FeatureStatistics
from spectral_diffusion.utils.images import to_uint8


@dataclass
class FeatureSet:
    """Statistics of a set of images' features and, when kept, the features ``(N, d)`` in index order."""

    stats: FeatureStatistics
    features: torch.Tensor | None = None
    indices: torch.Tensor | None = None


@torch.no_grad()
def extract(
    batches: Iterable[tuple[Sequence[int], torch.Tensor]],
    extractor: nn.Module,
    keep_features: bool = False,
    metadata: dict | None = None,
    quantize: str = "round",
) -> FeatureSet:
    """Accumulate the features of every batch (this rank's only; see :func:`combine_ranks`).

    ``quantize`` is how images become uint8 before the extractor (``utils/images.QUANTIZATIONS``).
    """
    stats = FeatureStatistics(extractor=extractor.identity, metadata=metadata)
    kept: list[torch.Tensor] = []
    kept_indices: list[torch.Tensor] = []
    for indices, images in batches:
        features = extractor(to_uint8(images, quantize)).double().cpu()
        stats.update(features)
        if keep_features:
            kept.append(features.float())
            kept_indices.append(torch.as_tensor(list(indices), dtype=torch.long))
    if not keep_features:
        return FeatureSet(stats)
    dim = extractor.num_features
    features = torch.cat(kept) if kept else torch.zeros(0, dim)
    indices = torch.cat(kept_indices) if kept_indices else torch.zeros(0, dtype=torch.long)
    return FeatureSet(stats, features, indices)


def combine_ranks(local: FeatureSet) -> FeatureSet:
    """The feature set of all ranks (identical on every rank); ``local`` itself on one process."""
    stats = merge_statistics(local.stats)
    if local.features is None:
        return FeatureSet(stats)
    indices, features = gather_features(local.indices, local.features)
    return FeatureSet(stats, features, indices)
