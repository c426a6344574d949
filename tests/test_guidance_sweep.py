"""The guidance truncation sweep on a tiny random UNet with a tiny extractor and classifier."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spectral_diffusion.diffusion import ClassifierFreeGuidance, DDIMSampler, GaussianDiffusion, sample
from spectral_diffusion.diffusion.noise import CounterNoise
from spectral_diffusion.evaluation.frechet import FeatureStatistics
from spectral_diffusion.evaluation.guidance_sweep import guidance_sweep, sweep_table
from spectral_diffusion.networks.unet import UNet

NUM_CLASSES, SHAPE, STEPS = 3, (1, 8, 8), 4


class TinyExtractor(nn.Module):
    """Features: the means of the four 4x4 quadrants and the image's standard deviation."""

    identity = "tiny-extractor"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        quadrants = nn.functional.avg_pool2d(images, 4).flatten(1)
        return torch.cat([quadrants, images.flatten(1).std(dim=1, keepdim=True)], dim=1)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = UNet(8, 1, 8, (1, 2), 1, head_channels=8, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0:  # the zero-initialised output layer: make guidance matter
                p.normal_(0, 0.3)
    classifier = nn.Linear(64, NUM_CLASSES)
    real = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference = FeatureStatistics(extractor=TinyExtractor.identity).update(TinyExtractor()(real))
    return net, nn.Sequential(nn.Flatten(), classifier), reference


def sweep(setup, tmp_path=None, **kwargs):
    net, classifier, reference = setup
    sampler = DDIMSampler(GaussianDiffusion("linear"), eta=0.0, steps=STEPS)
    options = {"cutoffs": [0.0, 0.5, 1.0], "scale": 3.0, "num_samples": 12, "batch_size": 5, "warmup": False}
    options.update(kwargs)
    rows = guidance_sweep(
        net, sampler, SHAPE, NUM_CLASSES, TinyExtractor(), reference, classifier, output_dir=tmp_path, **options
    )
    return rows, sampler


def test_rows_count_calls_and_reproduce_direct_generation(setup, tmp_path):
    rows, sampler = sweep(setup, tmp_path)
    assert [r["truncate_after"] for r in rows] == [0.0, 0.5, 1.0]
    assert [r["guided_steps"] for r in rows] == [0, 2, 4]
    assert [r["network_evaluations"] for r in rows] == [STEPS, STEPS + 2, 2 * STEPS]
    assert all(r["seconds"] > 0 and r["samples_per_s"] == pytest.approx(12 / r["seconds"]) for r in rows)

    # Full guidance, generated directly with the same per-sample seeds and class-balanced labels.
    net, classifier, reference = setup
    labels = torch.arange(12) % NUM_CLASSES
    images = sample(
        net,
        sampler,
        (12, *SHAPE),
        CounterNoise(0, range(12)),  # the sweep's per-sample streams (seed 0)
        class_labels=labels,
        guidance=ClassifierFreeGuidance(scale=3.0),
    ).clamp(-1, 1)
    expected_fd = FeatureStatistics(extractor=TinyExtractor.identity).update(TinyExtractor()(images))
    full = rows[-1]
    # batches of 5 against one of 12: the network rounds differently, the noise is the same
    assert full["fd"] == pytest.approx(expected_fd.frechet_distance(reference), rel=2e-5)
    with torch.no_grad():
        accuracy = (classifier(images).argmax(1) == labels).float().mean().item()
    assert full["class_accuracy"] == pytest.approx(accuracy)
    assert full["speedup"] == 1.0 and full["fd_change_pct"] == 0.0
    assert rows[0]["fd"] != full["fd"], "cutting guidance off must change the samples"
    assert rows[0]["fd_change_pct"] == pytest.approx(100 * (rows[0]["fd"] / full["fd"] - 1))


def test_sweep_writes_table_json_and_plot(setup, tmp_path):
    rows, _ = sweep(setup, tmp_path, cutoffs=[0.0, 1.0], num_samples=6)
    table = (tmp_path / "guidance_sweep.md").read_text()
    assert "| truncate_after | guided steps |" in table and table.count("\n| 0.00 |") == 1
    assert sweep_table(rows) in table
    saved = json.loads((tmp_path / "guidance_sweep.json").read_text())
    assert saved["rows"] == rows and saved["settings"]["guidance"]["scale"] == 3.0
    assert (tmp_path / "guidance_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_the_full_cut_off_there_is_no_relative_column(setup):
    rows, _ = sweep(setup, cutoffs=[0.0], num_samples=4)
    assert rows[0]["speedup"] is None and rows[0]["fd_change_pct"] is None
    assert "| - |" in sweep_table(rows)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cutoffs": [0.5, 1.2]}, r"cutoffs must be fractions in \[0, 1\], got \[1.2\]"),
        ({"cutoffs": []}, r"cutoffs is empty"),
        ({"num_samples": 1}, r"num_samples must be >= 2"),
        ({"scale": -2.0}, r"guidance.scale must be >= 0"),
    ],
)
def test_bad_settings_are_named(setup, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sweep(setup, **kwargs)


def test_reference_of_another_extractor_is_refused(setup):
    net, classifier, _ = setup
    other = FeatureStatistics(extractor="inception-v3").update(torch.randn(8, 5))
    sampler = DDIMSampler(GaussianDiffusion("linear"), steps=STEPS)
    with pytest.raises(ValueError, match="computed with extractor 'inception-v3'"):
        guidance_sweep(net, sampler, SHAPE, NUM_CLASSES, TinyExtractor(), other, classifier, num_samples=4)
