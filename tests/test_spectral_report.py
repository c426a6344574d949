"""Spectral report: band masks, Parseval, an oracle low-pass predictor with a known answer, the plot."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.diffusion import GaussianDiffusion
from spectral_diffusion.evaluation.spectral_report import (
    dwt_band_energy,
    fft_band_energy,
    plot_report,
    radial_band_masks,
    recovery_timesteps,
    spectral_errors,
    write_json,
)


def test_bands_partition_the_frequencies():
    masks, edges = radial_band_masks(16, 16, 4)
    assert masks.shape == (4, 16, 16) and edges == [0.0, 0.125, 0.25, 0.375, 0.5]
    assert torch.equal(masks.sum(0), torch.ones(16, 16, dtype=torch.long))  # every frequency exactly once
    assert masks[0, 0, 0] and masks[3, 8, 8]  # DC in the lowest band, the (0.5, 0.5) corner in the highest


def test_band_energies_obey_parseval():
    x = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    masks, _ = radial_band_masks(16, 16, 5)
    total = float(x.double().square().sum())
    assert float(fft_band_energy(x, masks).sum()) / (16 * 16) == pytest.approx(total, rel=1e-10)
    assert float(dwt_band_energy(x).sum()) == pytest.approx(total, rel=1e-10)  # orthogonal Haar


class LowPassOracle(nn.Module):
    """Predicts x0 as the ideal low-pass of the true images (which it is given): an analytic case."""

    def __init__(self, clean: torch.Tensor, keep: torch.Tensor) -> None:
        super().__init__()
        self.output = torch.fft.ifft2(torch.fft.fft2(clean) * keep).real

    def forward(self, x_t, t, labels=None):
        return self.output


def test_an_oracle_low_pass_predictor_has_zero_error_below_the_cut_and_total_error_above():
    clean = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    masks, _ = radial_band_masks(16, 16, 4)
    keep = masks[:2].any(0)  # bands 0 and 1 kept, 2 and 3 dropped
    diffusion = GaussianDiffusion(prediction_type="x0")
    perfect = ModelBundle(LowPassOracle(clean, torch.ones(16, 16)), diffusion, None, (1, 16, 16))
    lowpass = ModelBundle(LowPassOracle(clean, keep.double()), diffusion, None, (1, 16, 16))
    report = spectral_errors({"student": lowpass, "teacher": perfect}, clean, [500, 10], num_bands=4, batch_size=6)
    for row in report["models"]["student"]["fft_relative_error"]:
        assert row[:2] == pytest.approx([0, 0], abs=1e-10) and row[2:] == pytest.approx(
            [1, 1], rel=1e-6
        )  # float32 output
    assert report["models"]["teacher"]["fft_relative_error"][0] == pytest.approx([0] * 4, abs=1e-10)
    # The gap to the teacher is the student's whole error here.
    torch.testing.assert_close(
        torch.tensor(report["student_vs_teacher"]["fft_relative_error"]),
        torch.tensor(report["models"]["student"]["fft_relative_error"]),
        atol=1e-6,
        rtol=1e-6,
    )
    assert report["models"]["student"]["recovery_timestep"] == [500, 500, None, None]
    assert len(report["models"]["student"]["dwt_relative_error"][0]) == 4


def test_recovery_timesteps_pick_the_largest_recovered_timestep():
    errors = [[0.1, 0.9], [0.05, 0.4], [0.01, 0.1]]  # t = 900, 500, 100
    assert recovery_timesteps([900, 500, 100], errors, 0.5) == [900, 500]
    assert recovery_timesteps([900, 500, 100], errors, 0.05) == [100, None]


def test_bad_timesteps_and_shapes_are_named():
    clean = torch.zeros(2, 1, 8, 8)
    model = ModelBundle(LowPassOracle(clean, torch.ones(8, 8)), GaussianDiffusion(), None, (1, 8, 8))
    with pytest.raises(ValueError, match=r"spectral.timesteps=\[1000\] must lie in \[0, 1000\)"):
        spectral_errors({"student": model}, clean, [1000])
    with pytest.raises(ValueError, match=r"student denoises \(1, 8, 8\) but the data is \(1, 4, 4\)"):
        spectral_errors({"student": model}, torch.zeros(2, 1, 4, 4), [10])


def test_report_files(tmp_path):
    clean = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    masks, _ = radial_band_masks(8, 8, 3)
    diffusion = GaussianDiffusion(prediction_type="x0")
    models = {
        "student": ModelBundle(LowPassOracle(clean, masks[:1].any(0).double()), diffusion, None, (1, 8, 8)),
        "teacher": ModelBundle(LowPassOracle(clean, masks[:2].any(0).double()), diffusion, None, (1, 8, 8)),
    }
    report = spectral_errors(models, clean, [900, 100], num_bands=3)
    assert json.loads(write_json(report, tmp_path / "r.json").read_text())["timesteps"] == [900, 100]
    png = plot_report(report, tmp_path / "r.png", "test")
    assert Image.open(png).size[0] > 800
