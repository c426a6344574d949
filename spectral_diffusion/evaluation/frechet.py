"""Fréchet distance between Gaussians fitted to feature sets, and the statistics it needs.

FID is this distance with InceptionV3 features; offline, any extractor that maps images to
``(N, d)`` features will do (e.g. :class:`~spectral_diffusion.evaluation.fmnist_classifier.FMNISTFeatureExtractor`).

- :class:`FeatureStatistics` accumulates mean and covariance batch by batch in float64, so the
  features of 50k images never need to be held at once. It can be saved to ``.npz`` with the
  name of the extractor, so reference statistics are computed once per data set and reused.
- :func:`frechet_distance` is computed in float64 on the CPU (GPU eigensolvers are slow and
  inaccurate here), through a symmetric eigenproblem instead of a general matrix square root,
  and without scipy.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectral_diffusion.utils.checkpoint import write_bytes_atomically

log = logging.getLogger(__name__)

#: Format version of :meth:`FeatureStatistics.save` files; bumped when the layout changes.
STATS_FORMAT_VERSION = 1

ArrayLike = torch.Tensor | np.ndarray


def _as_float64(x: ArrayLike, name: str) -> torch.Tensor:
    """``x`` as a float64 CPU tensor (a copy: callers may modify their arrays afterwards)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    return x.detach().to(device="cpu", dtype=torch.float64).clone()


class FeatureStatistics:
    """Streaming mean and covariance of ``d``-dimensional features, in float64.

    Each :meth:`update` merges a batch with Chan et al.'s pairwise formula (mean and the sum of
    squared deviations about it), which, unlike accumulating ``sum x`` and ``sum x x^T``, does
    not lose precision when the features have a large mean compared with their spread.

    Args:
        dim: feature dimension ``d``; ``None`` takes it from the first batch.
        extractor: name of the feature extractor, stored with the statistics so that statistics
            from different extractors are never compared by mistake.
        metadata: anything else worth recording (data set, split, resize, weights hash), as
            JSON-serialisable values.
    """

    def __init__(self, dim: int | None = None, extractor: str = "", metadata: dict[str, Any] | None = None) -> None:
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.dim = dim
        self.extractor = extractor
        self.metadata = dict(metadata or {})
        self._count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None  # sum over samples of (x - mean)(x - mean)^T

    @property
    def count(self) -> int:
        """Number of feature vectors seen so far."""
        return self._count

    @torch.no_grad()
    def update(self, features: ArrayLike) -> FeatureStatistics:
        """Add a batch of features of shape ``(N, d)``; returns ``self`` so calls can be chained."""
        x = _as_float64(features, "features")
        if x.ndim != 2:
            raise ValueError(f"features must have shape (N, d), got {tuple(x.shape)}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dimension {x.shape[1]} but these statistics hold dimension {self.dim}")
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or infinity; the extractor or its input is broken")
        n = x.shape[0]
        if n == 0:
            return self
        batch_mean = x.mean(dim=0)
        centred = x - batch_mean
        batch_m2 = centred.T @ centred
        if self._count == 0:
            self._mean, self._m2 = batch_mean, batch_m2
        else:
            total = self._count + n
            delta = batch_mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + batch_m2 + torch.outer(delta, delta) * (self._count * n / total)
        self._count += n
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Add the features summarised by ``other`` (e.g. another rank's), exactly; returns ``self``.

        The same pairwise formula as :meth:`update`, so merging the statistics of disjoint parts
        equals accumulating all features in one place (up to float64 rounding).
        """
        if other.extractor != self.extractor:
            raise ValueError(f"cannot merge statistics of extractor {other.extractor!r} into {self.extractor!r}")
        if other.count == 0:
            return self
        if self.dim is None:
            self.dim = other.dim
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {other.dim} into dimension {self.dim}")
        if self._count == 0:
            self._count, self._mean, self._m2 = other._count, other._mean.clone(), other._m2.clone()
            return self
        total = self._count + other._count
        delta = other._mean - self._mean
        self._mean = self._mean + delta * (other._count / total)
        self._m2 = self._m2 + other._m2 + torch.outer(delta, delta) * (self._count * other._count / total)
        self._count = total
        return self

    @property
    def mean(self) -> torch.Tensor:
        """Mean feature vector, float64 ``(d,)``."""
        self._require(1)
        return self._mean.clone()

    @property
    def covariance(self) -> torch.Tensor:
        """Unbiased covariance (divided by ``N - 1``), float64 ``(d, d)``.

        With ``N <= d`` samples it has rank at most ``N - 1 < d``, i.e. it is singular; the Fréchet
        distance is still defined but is a poor estimate, so that case is logged as a warning.
        """
        self._require(2)
        if self._count <= self.dim:
            log.warning(
                "covariance of %d samples of %d-dimensional features is singular (N <= d); "
                "Fréchet distances from it are unreliable, use more samples",
                self._count,
                self.dim,
            )
        return self._m2 / (self._count - 1)

    def _require(self, n: int) -> None:
        if self._count < n:
            raise ValueError(
                f"these statistics hold {self._count} feature vector(s); at least {n} are needed "
                "(call update() with features first)"
            )

    def frechet_distance(self, other: FeatureStatistics) -> float:
        """Fréchet distance between the Gaussians fitted to ``self`` and ``other``.

        Refuses statistics from different extractors (by name), which would give a meaningless number.
        """
        if self.extractor != other.extractor:
            raise ValueError(
                f"cannot compare statistics from extractor {self.extractor!r} with ones from {other.extractor!r}"
            )
        return frechet_distance(self.mean, self.covariance, other.mean, other.covariance)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore (and keep updating) these statistics, as plain values."""
        return {
            "format_version": STATS_FORMAT_VERSION,
            "dim": self.dim,
            "count": self._count,
            "mean": None if self._mean is None else self._mean.clone(),
            "m2": None if self._m2 is None else self._m2.clone(),
            "extractor": self.extractor,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureStatistics:
        """Inverse of :meth:`state_dict`."""
        version = state.get("format_version")
        if version != STATS_FORMAT_VERSION:
            raise ValueError(f"feature statistics format_version {version!r}; this code reads {STATS_FORMAT_VERSION}")
        stats = cls(state["dim"], state.get("extractor", ""), state.get("metadata"))
        count = int(state["count"])
        if count > 0:
            mean, m2 = _as_float64(state["mean"], "mean"), _as_float64(state["m2"], "m2")
            if mean.shape != (stats.dim,) or m2.shape != (stats.dim, stats.dim):
                raise ValueError(
                    f"feature statistics of dim {stats.dim} hold mean {tuple(mean.shape)} and m2 {tuple(m2.shape)}"
                )
            stats._count, stats._mean, stats._m2 = count, mean, m2
        return stats

    def save(self, path: str | Path) -> Path:
        """Write the statistics to an ``.npz`` file atomically (temporary file, then rename).

        The file holds numpy arrays only (metadata as a JSON string), so :meth:`load` needs no pickle.
        """
        path = Path(path).expanduser()
        if path.suffix != ".npz":
            raise ValueError(f"feature statistics are saved as .npz; got {path}")
        state = self.state_dict()
        header = {k: state[k] for k in ("format_version", "dim", "count", "extractor", "metadata")}
        try:
            header_json = json.dumps(header)
        except TypeError as err:
            raise ValueError(f"metadata of feature statistics must be JSON-serialisable: {err}") from err
        arrays: dict[str, np.ndarray] = {"header": np.array(header_json)}
        if self._count > 0:
            arrays["mean"], arrays["m2"] = state["mean"].numpy(), state["m2"].numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes_atomically(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureStatistics:
        """Read statistics written by :meth:`save`."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"feature statistics file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                if header.get("count", 0) > 0:
                    header["mean"], header["m2"] = data["mean"], data["m2"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"{path} is not a feature statistics file written by FeatureStatistics.save: {err}"
            ) from err
        return cls.from_state_dict(header)

    def __repr__(self) -> str:
        return f"FeatureStatistics(dim={self.dim}, count={self._count}, extractor={self.extractor!r})"


def _check_gaussian(mu: torch.Tensor, sigma: torch.Tensor, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: the mean must be (d,) and the covariance (d, d); got {tuple(mu.shape)} and {tuple(sigma.shape)}"
        )
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise ValueError(f"{name}: the mean or covariance contains NaN or infinity")
    scale = sigma.abs().max().item()
    if (sigma - sigma.T).abs().max().item() > 1e-6 * max(scale, 1e-300):
        raise ValueError(f"{name}: the covariance is not symmetric")


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative rounding clamped to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), squared.

    ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, in float64 on the CPU. ``(S1 S2)^(1/2)``
    is not symmetric, and the usual ``scipy.linalg.sqrtm`` of it can return complex noise;
    but its trace equals that of ``(sqrt(S1) S2 sqrt(S1))^(1/2)``, whose argument is symmetric
    positive semi-definite, so the trace is the sum of the square roots of its eigenvalues
    (clamped at 0 against rounding). Singular covariances (fewer samples than dimensions) are
    handled, although the distance estimated from them is unreliable.
    """
    mu1, sigma1 = _as_float64(mu1, "mu1"), _as_float64(sigma1, "sigma1")
    mu2, sigma2 = _as_float64(mu2, "mu2"), _as_float64(sigma2, "sigma2")
    _check_gaussian(mu1, sigma1, "first Gaussian")
    _check_gaussian(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians have different dimensions: {mu1.shape[0]} and {mu2.shape[0]}")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    # Rounding can push a distance of (almost) zero slightly below it; a distance is never negative.
    return max(float(distance), 0.0)
