"""The parts of evaluate.py: FD/KID math, index splitting, seeded generation, reference cache, extractors, cost."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch
from omegaconf import OmegaConf
from torch import nn

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.diffusion import DDIMSampler, GaussianDiffusion
from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance
from spectral_diffusion.evaluation.cost import decoder_gmacs, network_calls_per_sample
from spectral_diffusion.evaluation.distributed import gather_features, merge_statistics, rank_indices
from spectral_diffusion.evaluation.extractors import FMNISTClassifierExtractor, build_feature_extractor
from spectral_diffusion.evaluation.fmnist_classifier import FMNISTClassifier, FMNISTFeatureExtractor
from spectral_diffusion.evaluation.frechet import FeatureStatistics
from spectral_diffusion.evaluation.generation import generate
from spectral_diffusion.evaluation.kid import kernel_inception_distance, polynomial_mmd2
from spectral_diffusion.evaluation.metrics import generated_features, quality_metrics, student_over_teacher
from spectral_diffusion.evaluation.reference import reference_features, reference_key
from spectral_diffusion.evaluation.throughput import measure_throughput
from spectral_diffusion.networks import UNet


def scipy_frechet_of_features(a: np.ndarray, b: np.ndarray) -> float:
    """An independent FID: numpy moments and scipy's general matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# --- Fréchet distance of features -------------------------------------------------------------


def test_fid_of_random_features_matches_scipy_to_1e6():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(0.3, 1.2, size=(300, 16)) @ rng.normal(size=(16, 16))
    ours = FeatureStatistics().update(a).frechet_distance(FeatureStatistics().update(b))
    assert ours == pytest.approx(scipy_frechet_of_features(a, b), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(1).normal(size=(200, 12))
    stats = FeatureStatistics().update(features)
    assert stats.frechet_distance(FeatureStatistics().update(features[::-1].copy())) == pytest.approx(0, abs=1e-9)


def test_gaussian_features_approach_the_closed_form_distance():
    # Isotropic Gaussians N(m1, s1^2 I) and N(m2, s2^2 I): FD = |m1 - m2|^2 + d (s1 - s2)^2.
    d, n = 4, 200_000
    generator = torch.Generator().manual_seed(2)
    m1, m2, s1, s2 = torch.zeros(d), torch.full((d,), 0.5), 1.0, 2.0
    a = m1 + s1 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    b = m2 + s2 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    expected = float((m1 - m2).square().sum()) + d * (s1 - s2) ** 2  # 1.0 + 4.0
    measured = FeatureStatistics().update(a).frechet_distance(FeatureStatistics().update(b))
    assert measured == pytest.approx(expected, rel=0.02)


def test_merged_statistics_equal_accumulating_everything():
    rng = np.random.default_rng(3)
    parts = [5.0 + rng.normal(size=(n, 6)) for n in (10, 1, 37)]
    merged = FeatureStatistics(extractor="e")
    for part in parts:
        merged.merge(FeatureStatistics(extractor="e").update(part))
    whole = np.vstack(parts)
    np.testing.assert_allclose(merged.mean.numpy(), whole.mean(0), rtol=1e-13)
    np.testing.assert_allclose(merged.covariance.numpy(), np.cov(whole, rowvar=False), rtol=1e-10, atol=1e-12)
    assert merge_statistics(merged) is merged  # one process: nothing to gather
    with pytest.raises(ValueError, match="extractor 'x' into 'e'"):
        merged.merge(FeatureStatistics(extractor="x").update(parts[0]))


# --- KID --------------------------------------------------------------------------------------


def test_polynomial_mmd_matches_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    generator = torch.Generator().manual_seed(4)
    x = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    y = torch.randn(50, 8, generator=generator, dtype=torch.float64) + 0.5  # torchmetrics assumes equal sizes
    assert float(polynomial_mmd2(x, y)) == pytest.approx(float(poly_mmd(x, y)), rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    generator = torch.Generator().manual_seed(5)
    a, b = torch.randn(600, 8, generator=generator), torch.randn(600, 8, generator=generator)
    same, _ = kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    shifted, std = kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=200)
    assert abs(same) < 0.05 < shifted and std > 0
    assert kernel_inception_distance(a, b, 5, 100, seed=1) == kernel_inception_distance(a, b, 5, 100, seed=1)
    with pytest.raises(ValueError, match="same d"):
        kernel_inception_distance(a, b[:, :4])


# --- splitting work over ranks ------------------------------------------------------------------


@pytest.mark.parametrize(("num_samples", "world_size"), [(10, 3), (2, 4), (50000, 8), (0, 2)])
def test_rank_indices_cover_every_sample_once_without_padding(num_samples, world_size):
    shares = [rank_indices(num_samples, r, world_size) for r in range(world_size)]
    together = sorted(i for share in shares for i in share)
    assert together == list(range(num_samples))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_rank_indices_reject_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 3 is not in a world of size 3"):
        rank_indices(10, 3, 3)


def test_gathered_features_come_back_in_index_order():
    indices = torch.tensor([4, 0, 2])
    features = torch.tensor([[4.0], [0.0], [2.0]])
    order, gathered = gather_features(indices, features)
    assert order.tolist() == [0, 2, 4] and gathered[:, 0].tolist() == [0.0, 2.0, 4.0]


# --- seeded generation --------------------------------------------------------------------------


def tiny_model(num_classes: int | None = None, size: int = 16) -> ModelBundle:
    torch.manual_seed(0)
    net = UNet(size, 1, 8, (1, 2), 1, (), head_channels=8, num_classes=num_classes).eval()
    return ModelBundle(net, GaussianDiffusion(), None, (1, size, size), num_classes)


def test_samples_do_not_depend_on_the_batch_size():
    model = tiny_model()
    sampler = DDIMSampler(model.diffusion, eta=1.0, steps=3)  # stochastic: sampler noise matters too
    runs = {
        size: torch.cat([images for _, images in generate(model, sampler, range(5), 7, size, "cpu")])
        for size in (1, 2, 5)
    }
    torch.testing.assert_close(runs[1], runs[5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(runs[2], runs[5], atol=1e-5, rtol=1e-4)
    # A rank's share (indices 1, 3) equals those rows of the whole.
    _, share = next(generate(model, sampler, [1, 3], 7, 2, "cpu"))
    torch.testing.assert_close(share, runs[5][[1, 3]], atol=1e-5, rtol=1e-4)
    other_seed = torch.cat([images for _, images in generate(model, sampler, range(5), 8, 5, "cpu")])
    assert not torch.allclose(other_seed, runs[5])


def test_fd_does_not_depend_on_the_batch_size(tmp_path):
    model = tiny_model(size=32)  # the Fashion-MNIST extractor's input size
    sampler = DDIMSampler(model.diffusion, eta=1.0, steps=2)
    extractor = random_fmnist_extractor(tmp_path)
    reference = FeatureStatistics(extractor=extractor.identity).update(torch.rand(40, 16))

    def fd(batch_size: int) -> float:
        generated, _, _ = generated_features(model, sampler, extractor, 12, 0, batch_size, "cpu")
        return generated.stats.frechet_distance(reference)

    assert fd(4) == pytest.approx(fd(12), rel=1e-5)


def test_class_labels_follow_the_sample_index():
    model = tiny_model(num_classes=3)
    seen = []
    forward = model.network.forward

    def record(x, t, labels=None):
        seen.append(labels.tolist())
        return forward(x, t, labels)

    model.network.forward = record
    list(generate(model, DDIMSampler(model.diffusion, steps=1), [4, 5, 6], 0, 3, "cpu"))
    assert seen == [[1, 2, 0]]


def test_guidance_on_an_unconditional_model_is_refused():
    with pytest.raises(ValueError, match="guidance.scale=2.0 needs a class-conditional model"):
        next(generate(tiny_model(), DDIMSampler(GaussianDiffusion(), steps=1), [0], 0, 1, "cpu", guidance=2.0))


# --- extractors ---------------------------------------------------------------------------------


def random_fmnist_extractor(tmp_path) -> FMNISTClassifierExtractor:
    torch.manual_seed(0)
    path = tmp_path / "cls.pt"
    torch.save(FMNISTClassifier(width=8, num_features=16).state_dict(), path)
    return build_feature_extractor("fmnist_classifier", path)


def test_fmnist_extractor_sees_uint8_images_as_the_data_module_makes_them(tmp_path):
    extractor = random_fmnist_extractor(tmp_path)
    images = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    expected = FMNISTFeatureExtractor(tmp_path / "cls.pt")(images.float().div(127.5).sub(1.0))
    torch.testing.assert_close(extractor(images), expected)
    assert extractor.metric_key == "fd_fmnist" and extractor.identity.startswith("fmnist_classifier-")
    with pytest.raises(ValueError, match="uint8 images"):
        extractor(images.float())


def test_unknown_extractor_is_named():
    with pytest.raises(ValueError, match="feature_extractor='vgg' is not known.*fmnist_classifier"):
        build_feature_extractor("vgg")


def test_offline_inception_error_names_the_weights_path_option(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"cannot download the InceptionV3 weights.*metrics\.fid\.weights_path"):
        build_feature_extractor("inception")


def test_inception_reads_local_weights_with_the_pinned_resize(monkeypatch, tmp_path):
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    # Random weights in torch-fidelity's layout, made without the network.
    monkeypatch.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    state = build_feature_extractor("inception").net.state_dict()
    monkeypatch.undo()
    torch.save(state, tmp_path / "inception.pth")
    extractor = build_feature_extractor("inception", tmp_path / "inception.pth")
    assert extractor.net.use_antialias is False and "no antialias" in extractor.resize
    assert extractor.metric_key == "fid" and "inception.pth" in extractor.identity
    features = extractor(torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    with pytest.raises(FileNotFoundError, match=r"metrics\.fid\.weights_path=.*missing\.pth"):
        build_feature_extractor("inception", tmp_path / "missing.pth")


# --- reference cache ----------------------------------------------------------------------------


class CountingExtractor(nn.Module):
    """Mean brightness per row band: 4 cheap features, and a count of the images it saw."""

    identity = "counting-v1"
    metric_key = "fd_test"
    resize = "none"
    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.images_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.images_seen += len(images)
        return images.float().reshape(len(images), 4, -1).mean(-1)


def test_reference_statistics_are_cached_and_reused(fmnist_root, tmp_path):
    data_cfg = OmegaConf.create(
        {"_target_": "spectral_diffusion.data.FashionMNISTDataModule", "root": str(fmnist_root), "download": False}
    )
    extractor = CountingExtractor()
    first, path, computed = reference_features(data_cfg, extractor, tmp_path / "cache", "val", None, 8)
    assert computed and extractor.images_seen == 32 and first.stats.count == 32
    assert path.name.startswith("fashionmnist-1x32x32-val-nall-counting-v1-")
    again, path_again, computed_again = reference_features(data_cfg, extractor, tmp_path / "cache", "val", None, 8)
    assert not computed_again and path_again == path and extractor.images_seen == 32  # not recomputed
    assert torch.equal(again.stats.mean, first.stats.mean) and torch.equal(again.features, first.features)
    # Another split, image count or extractor is another file.
    assert reference_key(data_cfg, (1, 32, 32), "train", None, "counting-v1") != path.stem
    assert reference_key(data_cfg, (1, 32, 32), "val", 16, "counting-v1") != path.stem
    _, _, computed_subset = reference_features(data_cfg, extractor, tmp_path / "cache", "val", 16, 8)
    assert computed_subset and extractor.images_seen == 48


def test_loader_settings_do_not_change_the_reference_key(fmnist_root):
    base = {"_target_": "x.FashionMNISTDataModule", "root": str(fmnist_root)}
    key = reference_key(base, (1, 32, 32), "val", None, "e")
    assert reference_key(base | {"batch_size": 7, "num_workers": 3}, (1, 32, 32), "val", None, "e") == key
    assert reference_key(base | {"root": "/elsewhere"}, (1, 32, 32), "val", None, "e") != key


def test_quality_metrics_name_the_key_of_the_extractor(caplog):
    generator = torch.Generator().manual_seed(6)
    real = torch.randn(60, 4, generator=generator)
    fake = torch.randn(50, 4, generator=generator) + 0.5
    extractor = CountingExtractor()
    from spectral_diffusion.evaluation.features import FeatureSet

    reference = FeatureSet(FeatureStatistics(extractor="counting-v1").update(real), real)
    generated = FeatureSet(FeatureStatistics(extractor="counting-v1").update(fake), fake)
    metrics = quality_metrics(generated, reference, extractor, True, {"num_subsets": 3, "subset_size": 20})
    assert set(metrics) == {"fd_test", "kd_test_mean", "kd_test_std"}
    assert "not comparable with published numbers" in caplog.text


def test_student_over_teacher_ratios():
    ratios = student_over_teacher({"gmacs": 1.0, "fid": 6.0, "params_m": 2.0}, {"gmacs": 8.0, "fid": 5.0})
    assert ratios == {"gmacs": 0.125, "fid": 1.2}


# --- cost and throughput ------------------------------------------------------------------------


class ConvDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 3, padding=1, bias=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(z)


def test_decoder_gmacs_and_network_calls():
    # A 3x3 conv 4 -> 3 channels on 8x8: 8*8 * 3 * 4*9 MACs.
    assert decoder_gmacs(ConvDecoder(), (4, 8, 8)) == pytest.approx(8 * 8 * 3 * 4 * 9 / 1e9)
    assert network_calls_per_sample(50) == 50 and network_calls_per_sample(50, 7.5) == 100
    assert network_calls_per_sample(50, 1.0) == 50  # scale 1: the conditional prediction alone
    # Guidance truncation: the first half of the steps guided (2 calls), the rest one call.
    assert network_calls_per_sample(50, ClassifierFreeGuidance(scale=7.5, truncate_after=0.5)) == 75


def test_guided_generation_of_a_conditional_model_stays_per_sample_seeded():
    model = tiny_model(num_classes=3)
    with torch.no_grad():  # the zero-initialised output layer would make every prediction 0
        for parameter in model.network.parameters():
            parameter.normal_(0, 0.2)
    sampler = DDIMSampler(model.diffusion, eta=1.0, steps=2)
    guided = torch.cat([x for _, x in generate(model, sampler, range(4), 0, 4, "cpu", guidance=3.0)])
    in_pairs = torch.cat([x for _, x in generate(model, sampler, range(4), 0, 2, "cpu", guidance=3.0)])
    plain = torch.cat([x for _, x in generate(model, sampler, range(4), 0, 4, "cpu")])
    torch.testing.assert_close(guided, in_pairs, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(guided, plain)


def test_throughput_counts_samples_per_second():
    model = tiny_model()
    result = measure_throughput(model, DDIMSampler(model.diffusion, steps=2), 3, "cpu", repeats=2, warmup=1)
    assert result["samples_per_s"] == pytest.approx(3 / result["s_per_batch"])
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure_throughput(model, DDIMSampler(model.diffusion, steps=2), 3, "cpu", repeats=0)


def test_statistics_of_another_protocol_are_refused_not_mixed(fmnist_root, tmp_path):
    """A cache file under the key of one extractor that holds another's statistics (renamed, or
    written by other code) is refused with the two identities named, never compared."""
    data_cfg = OmegaConf.create(
        {"_target_": "spectral_diffusion.data.FashionMNISTDataModule", "root": str(fmnist_root), "download": False}
    )
    _, path, _ = reference_features(data_cfg, CountingExtractor(), tmp_path / "cache", "val", None, 8)

    class OtherWeights(CountingExtractor):
        identity = "counting-v2"

    other_key = reference_key(data_cfg, (1, 32, 32), "val", None, OtherWeights.identity)
    assert other_key != path.stem  # another extractor (weights hash) is another file
    for suffix in (".npz", ".features.npy"):
        source = path.with_name(path.stem + suffix) if suffix != ".npz" else path
        source.rename(path.with_name(other_key + suffix))
    with pytest.raises(ValueError, match="computed with extractor 'counting-v1', not 'counting-v2'"):
        reference_features(data_cfg, OtherWeights(), tmp_path / "cache", "val", None, 8)
