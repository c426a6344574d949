"""Fréchet distance, streaming feature statistics, and the offline Fashion-MNIST feature extractor."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from spectral_diffusion.data.fashion_mnist import GrayscaleImageDataset, load_split
from spectral_diffusion.evaluation import (
    FeatureStatistics,
    FMNISTClassifier,
    FMNISTFeatureExtractor,
    accuracy,
    frechet_distance,
    load_fashion_mnist_images,
    train_classifier,
)
from spectral_diffusion.utils.checkpoint import CheckpointMismatchError


def random_gaussian(rng: np.random.Generator, d: int, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random mean and a random SPD (or, with ``rank < d``, singular PSD) covariance."""
    a = rng.normal(size=(d, rank or d))
    sigma = a @ a.T / d + (0 if rank else 0.1 * np.eye(d))
    return rng.normal(size=d), sigma


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The textbook formula with scipy's general matrix square root (pytorch-fid's reference)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# --- frechet_distance -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("d", [1, 5, 32])
def test_matches_scipy_sqrtm_reference(seed, d):
    rng = np.random.default_rng(seed)
    (mu1, s1), (mu2, s2) = random_gaussian(rng, d), random_gaussian(rng, d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-9, abs=1e-10)
    assert ours > 0


def test_one_dimensional_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert d == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_diagonal_closed_form_including_singular_covariances():
    rng = np.random.default_rng(3)
    var1 = rng.uniform(0.1, 4.0, size=16)
    var2 = rng.uniform(0.1, 4.0, size=16)
    var1[:4] = 0.0  # singular: the formula stays exact through the clamped square roots
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)


def test_low_rank_covariances_match_the_reference():
    # Fewer samples than dimensions make rank-deficient covariances, where a general sqrtm struggles.
    rng = np.random.default_rng(4)
    (mu1, s1), (mu2, s2) = random_gaussian(rng, 24, rank=8), random_gaussian(rng, 24, rank=10)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_zero_for_identical_statistics_and_symmetric():
    rng = np.random.default_rng(5)
    (mu1, s1), (mu2, s2) = random_gaussian(rng, 64), random_gaussian(rng, 64)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


def test_torch_float32_and_numpy_inputs_agree():
    rng = np.random.default_rng(6)
    (mu1, s1), (mu2, s2) = random_gaussian(rng, 8), random_gaussian(rng, 8)
    from_numpy = frechet_distance(mu1, s1, mu2, s2)
    from_torch = frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    assert from_torch == from_numpy
    from_float32 = frechet_distance(*(torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2)))
    assert from_float32 == pytest.approx(from_numpy, rel=1e-5)


def test_bad_inputs_are_named():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="different dimensions: 3 and 2"):
        frechet_distance(mu, sigma, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"first Gaussian.*\(d,\).*\(3,\) and \(3, 2\)"):
        frechet_distance(mu, np.zeros((3, 2)), mu, sigma)
    with pytest.raises(ValueError, match="second Gaussian: the covariance is not symmetric"):
        frechet_distance(mu, sigma, mu, np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([0.0, np.nan, 0.0]), sigma, mu, sigma)


# --- FeatureStatistics ------------------------------------------------------------------------


def test_streaming_statistics_equal_numpy_on_the_whole():
    rng = np.random.default_rng(7)
    # A large mean relative to the spread: naive sum / sum-of-squares accumulation would lose digits.
    features = 1e4 + rng.normal(size=(500, 12)) * np.linspace(0.1, 3.0, 12)
    stats = FeatureStatistics()
    for chunk in np.split(features, [1, 1, 37, 200, 499]):  # includes an empty and a 1-row chunk
        stats.update(torch.from_numpy(chunk))
    assert stats.count == 500 and stats.dim == 12
    assert stats.mean.dtype == torch.float64
    np.testing.assert_allclose(stats.mean.numpy(), features.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(stats.covariance.numpy(), np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)


def test_float32_features_are_accumulated_in_float64():
    rng = np.random.default_rng(8)
    features = rng.normal(size=(300, 4)).astype(np.float32)
    stats = FeatureStatistics(dim=4)
    for chunk in np.array_split(features, 7):
        stats.update(torch.from_numpy(chunk))
    reference = np.cov(features.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(stats.covariance.numpy(), reference, rtol=1e-12, atol=1e-14)


def test_save_load_round_trip_and_continued_updates(tmp_path):
    rng = np.random.default_rng(9)
    first, second = rng.normal(size=(50, 6)), rng.normal(size=(30, 6))
    meta = {"dataset": "fashion_mnist", "split": "train", "weights_sha256": "abc"}
    stats = FeatureStatistics(extractor="fmnist_classifier", metadata=meta).update(first)
    path = stats.save(tmp_path / "ref" / "stats.npz")
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temporary files left
    with np.load(path, allow_pickle=False) as data:  # plain arrays, no pickle needed
        assert set(data.files) == {"header", "mean", "m2"}

    loaded = FeatureStatistics.load(path)
    assert (loaded.count, loaded.dim, loaded.extractor, loaded.metadata) == (50, 6, "fmnist_classifier", meta)
    assert torch.equal(loaded.mean, stats.mean) and torch.equal(loaded.covariance, stats.covariance)
    loaded.update(second)
    np.testing.assert_allclose(loaded.covariance.numpy(), np.cov(np.vstack([first, second]), rowvar=False), rtol=1e-12)

    empty = FeatureStatistics.load(FeatureStatistics(dim=3, extractor="x").save(tmp_path / "empty.npz"))
    assert (empty.count, empty.dim) == (0, 3)


def test_bad_files_and_uses_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        FeatureStatistics.load(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz is not a feature statistics file"):
        FeatureStatistics.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match=r"saved as \.npz"):
        FeatureStatistics().save(tmp_path / "stats.pt")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        FeatureStatistics(metadata={"bad": object()}).update(np.zeros((2, 2))).save(tmp_path / "s.npz")

    stats = FeatureStatistics(dim=4)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        stats.update(np.zeros((1, 4))).covariance  # noqa: B018
    with pytest.raises(ValueError, match="dimension 5 but these statistics hold dimension 4"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        stats.update(np.zeros(4))
    with pytest.raises(ValueError, match="extractor 'a' with ones from 'b'"):
        FeatureStatistics(extractor="a").frechet_distance(FeatureStatistics(extractor="b"))


def test_singular_covariance_is_warned_about(caplog):
    stats = FeatureStatistics().update(np.random.default_rng(10).normal(size=(5, 8)))
    with caplog.at_level(logging.WARNING, logger="spectral_diffusion.evaluation.frechet"):
        stats.covariance  # noqa: B018
    assert "singular (N <= d)" in caplog.text and "5 samples of 8-dimensional" in caplog.text


def test_statistics_distance_equals_the_function():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(200, 5)), rng.normal(1.0, 2.0, size=(150, 5))
    ours = FeatureStatistics(extractor="e").update(a).frechet_distance(FeatureStatistics(extractor="e").update(b))
    expected = scipy_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert ours == pytest.approx(expected, rel=1e-9)


# --- classifier and feature extractor ---------------------------------------------------------


def test_classifier_shapes():
    net = FMNISTClassifier(width=8, num_features=64).eval()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    assert net(x).shape == (5, 10)
    features = net.features(x)
    assert features.shape == (5, 64) and (features >= 0).all()  # post-ReLU, as Inception's pool3
    assert torch.allclose(net.head[1](features), net(x), atol=1e-6)  # features feed the classifier


@pytest.fixture
def weights_file(tmp_path) -> tuple[Path, FMNISTClassifier]:
    torch.manual_seed(0)
    net = FMNISTClassifier(width=8, num_features=32).eval()
    path = tmp_path / "cls.pt"
    torch.save(net.state_dict(), path)
    return path, net


def test_missing_weights_error_names_the_path_and_the_script(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        FMNISTFeatureExtractor(tmp_path / "nowhere" / "cls.pt")
    assert str(tmp_path / "nowhere" / "cls.pt") in str(info.value)
    assert "python scripts/train_fid_classifier.py" in str(info.value)


def test_extractor_loads_weights_and_is_frozen(weights_file):
    path, net = weights_file
    extractor = FMNISTFeatureExtractor(path, batch_size=3)
    assert extractor.num_features == 32 and len(extractor.weights_sha256) == 64
    assert extractor.identity == "fmnist_classifier-" + extractor.weights_sha256[:12]
    x = torch.rand(7, 1, 32, 32) * 2 - 1  # 7 images in chunks of 3
    with torch.no_grad():
        assert torch.allclose(extractor(x), net.features(x), atol=1e-6)
    assert extractor(x[:1]).shape == (1, 32) and extractor(x[:0]).shape == (0, 32)
    extractor.train()
    assert not extractor.training and not extractor.classifier.training
    assert not any(p.requires_grad for p in extractor.parameters())


def test_extractor_rejects_bad_inputs_and_weights(weights_file, tmp_path):
    extractor = FMNISTFeatureExtractor(weights_file[0])
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\), got \(2, 1, 28, 28\)"):
        extractor(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="float images in \\[-1, 1\\], got dtype torch.uint8"):
        extractor(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt does not hold FMNISTClassifier weights"):
        FMNISTFeatureExtractor(tmp_path / "other.pt")
    state = FMNISTClassifier(width=8, num_features=32).state_dict()
    del state["body.4.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointMismatchError, match="body.4.weight"):
        FMNISTFeatureExtractor(tmp_path / "partial.pt")


def test_distance_matches_torchmetrics_fid_with_the_same_extractor(weights_file):
    from torchmetrics.image.fid import FrechetInceptionDistance

    extractor = FMNISTFeatureExtractor(weights_file[0])
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(120, 1, 32, 32, generator=generator) * 2 - 1
    fake = (torch.rand(100, 1, 32, 32, generator=generator) * 1.5 - 1).clamp(-1, 1)
    metric = FrechetInceptionDistance(feature=extractor)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    reference = float(metric.compute())

    ours = FeatureStatistics(extractor="x")
    for chunk in real.split(50):
        ours.update(extractor(chunk))
    generated = FeatureStatistics(extractor="x").update(extractor(fake))
    assert ours.frechet_distance(generated) == pytest.approx(reference, rel=1e-3)


# --- deterministic training -------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Train tiny models on one thread: reproducibility holds per thread count, and on a shared
    CPU, two OpenMP threads of such small ops spend most of their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fashion_mnist_images_match_the_data_module_format(fmnist_root):
    images, labels = load_fashion_mnist_images(fmnist_root, "train")
    dataset = GrayscaleImageDataset(*load_split(fmnist_root, "train"), pad_to=32)
    assert images.shape == (64, 1, 32, 32) and labels.dtype == torch.int64
    for i in (0, 17, 63):
        assert torch.equal(images[i], dataset[i][0]) and labels[i] == dataset[i][1]


def test_training_is_bitwise_reproducible(fmnist_root, one_thread):
    images, labels = load_fashion_mnist_images(fmnist_root, "train")
    rng_before = torch.get_rng_state()
    runs = [
        train_classifier(images, labels, epochs=2, seed=seed, batch_size=16, width=8, num_features=16)
        for seed in (0, 0, 1)
    ]
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training
    first, again, other = (r.state_dict() for r in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed matters
    untrained = FMNISTClassifier(width=8, num_features=16).state_dict()
    assert not torch.equal(first["head.1.weight"], untrained["head.1.weight"])
    assert 0.0 <= accuracy(runs[0], images, labels) <= 1.0


def test_training_rejects_bad_arguments(fmnist_root):
    images, labels = load_fashion_mnist_images(fmnist_root, "train")
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 32, 32\)"):
        train_classifier(images[:, :, :28, :28], labels, epochs=1, seed=0)
    with pytest.raises(ValueError, match="batch_size=128 is larger than the 64 training images"):
        train_classifier(images, labels, epochs=1, seed=0, batch_size=128)
