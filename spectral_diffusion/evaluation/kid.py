"""Kernel Inception Distance (Bińkowski et al.): unbiased MMD² with a cubic polynomial kernel.

``k(x, y) = (x·y / d + 1)^3``, averaged over ``num_subsets`` random subsets of ``subset_size``
features from each set, as torch-fidelity and torchmetrics compute it (the mean and the standard
deviation over subsets are reported, ``kid_mean`` and ``kid_std``). Unlike FID it needs the
features themselves, not just their mean and covariance; the subsets are drawn from a seeded
generator, so the number is reproducible. Computed in float64.
"""

from __future__ import annotations

import torch


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² between feature sets ``x (m, d)`` and ``y (n, d)`` with ``(x·y/d + 1)^3``."""
    x, y = x.double(), y.double()
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return term_xx + term_yy - 2 * k_xy.mean()


def kernel_inception_distance(
    generated: torch.Tensor,
    reference: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """``(mean, std)`` of :func:`polynomial_mmd2` over random subsets of both feature sets.

    ``subset_size`` is lowered to the size of the smaller set if needed (with at least 2).
    """
    if generated.ndim != 2 or reference.ndim != 2 or generated.shape[1] != reference.shape[1]:
        raise ValueError(
            f"KID needs two (N, d) feature sets of the same d; got {tuple(generated.shape)} and {tuple(reference.shape)}"
        )
    size = min(subset_size, len(generated), len(reference))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features in each set; got {len(generated)} and {len(reference)}")
    if num_subsets < 1:
        raise ValueError(f"metrics.kid.num_subsets must be >= 1, got {num_subsets}")
    generator = torch.Generator().manual_seed(seed)
    generated, reference = generated.cpu(), reference.cpu()
    values = torch.stack(
        [
            polynomial_mmd2(
                generated[torch.randperm(len(generated), generator=generator)[:size]],
                reference[torch.randperm(len(reference), generator=generator)[:size]],
            )
            for _ in range(num_subsets)
        ]
    )
    std = values.std(unbiased=False) if num_subsets > 1 else torch.zeros((), dtype=torch.float64)
    return float(values.mean()), float(std)
