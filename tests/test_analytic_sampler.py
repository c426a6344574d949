"""Samplers driven by the exact denoiser of Gaussian data must reproduce the data's moments.

For data x0 ~ N(mu, Sigma) and x_t = sqrt(a) x0 + sqrt(1 - a) eps, the optimal eps-predictor is

    E[eps | x_t] = sqrt(1 - a) (a Sigma + (1 - a) I)^-1 (x_t - sqrt(a) mu),

so a sampler fed this predictor should return samples with mean mu and covariance Sigma, up to
(1) Monte-Carlo error and (2) the sampler's own time-discretisation error.

Tolerances, for N = 20000 samples in 2-D with Sigma's entries of order 1:
- Monte-Carlo: the standard error of a mean is sqrt(Sigma_ii / N) <= 0.0071 and of a covariance
  entry about sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / N) <= 0.0085; we allow 4 standard errors
  (0.03 and 0.035).
- Discretisation: DDIM with 50 steps contracts the variance a little at every step (for Gaussian
  data its update is affine, so this bias is computed exactly below by pushing the Gaussian
  through the sampler: 0.04 to 0.071 for these three schedules). DDPM with all 1000 steps has a bias well under the
  Monte-Carlo error.
So DDIM-50 gets 0.03 (mean) and 0.035 + 0.075 = 0.11 (covariance); DDPM-1000 gets 0.03 and 0.035.
The exact push-forward is then compared with the samples at the Monte-Carlo tolerance alone, and
a deliberately wrong predictor must fail the same checks.

DPM-Solver++ (2M) is held to DDIM-50's budget with only 20 steps. Its exact push-forward bias is
0.015 (linear), 0.066 (LDM scaled-linear) and 0.015 (cosine), against DDIM-50's 0.069, 0.071 and
0.049, while DDIM at 20 steps is off by 0.11-0.16 and fails the same budget.
"""

from __future__ import annotations

import pytest
import torch

from spectral_diffusion.diffusion import DDIMSampler, DDPMSampler, DPMSolverPlusPlusSampler, GaussianDiffusion, sample

MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
N = 20000
MEAN_TOL, COV_MC_TOL = 0.03, 0.035
DDIM_BIAS = 0.075  # budget for DDIM-50's exact discretisation bias in the covariance
PROCESSES = {
    "linear": GaussianDiffusion("linear", 1000, 1e-4, 0.02),
    "ldm_scaled_linear": GaussianDiffusion("scaled_linear", 1000, 0.0015, 0.0195),
    "cosine": GaussianDiffusion("cosine"),
}


def exact_eps_predictor(diffusion: GaussianDiffusion, mu: torch.Tensor, sigma: torch.Tensor):
    eye = torch.eye(len(mu), dtype=torch.float64)

    def predict(x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        a = diffusion.alpha_bar(t[:1], x).squeeze()
        cov_t = a * sigma + (1 - a) * eye
        return (1 - a).sqrt() * torch.linalg.solve(cov_t, (x - a.sqrt() * mu).T).T

    return predict


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), torch.cov(x.T)


def ddim_push_forward(sampler: DDIMSampler, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and covariance of deterministic DDIM started from N(0, I), for an affine model."""
    mean, cov = torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    for t in sampler.timesteps.tolist():
        points = torch.cat([mean, mean + torch.eye(2, dtype=torch.float64)])  # mean and mean + e_i
        tt = torch.full((3,), t)
        out = sampler.step(model(points, tt), t, points)
        jacobian = (out[1:] - out[:1]).T  # column i = step(mean + e_i) - step(mean)
        mean, cov = out[:1], jacobian @ cov @ jacobian.T
    return mean[0], cov


def sampler_push_forward(sampler, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact output mean and covariance of any deterministic sampler for an affine model.

    The whole run maps x_T to x_0 affinely, multistep history included, so running it on the
    points 0, e_1, e_2 (one batch; the history is per row) gives the map's offset and Jacobian.
    """
    points = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)])
    out = sample(model, sampler, (3, 2), noise=points, dtype=torch.float64)
    jacobian = (out[1:] - out[:1]).T
    return out[0], jacobian @ jacobian.T


@pytest.mark.parametrize("name", list(PROCESSES))
def test_dpm_solver_20_steps_reaches_ddim_50_tolerance(name):
    diffusion = PROCESSES[name]
    model = exact_eps_predictor(diffusion, MU, SIGMA)
    dpm = DPMSolverPlusPlusSampler(diffusion, steps=20)

    x = sample(model, dpm, (N, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    mean, cov = moments(x)
    assert (mean - MU).abs().max() < MEAN_TOL
    assert (cov - SIGMA).abs().max() < COV_MC_TOL + DDIM_BIAS

    exact_mean, exact_cov = sampler_push_forward(dpm, model)
    dpm_bias = (exact_cov - SIGMA).abs().max()
    _, ddim50_cov = sampler_push_forward(DDIMSampler(diffusion, eta=0.0, steps=50), model)
    _, ddim20_cov = sampler_push_forward(DDIMSampler(diffusion, eta=0.0, steps=20), model)
    assert dpm_bias < DDIM_BIAS
    assert dpm_bias <= (ddim50_cov - SIGMA).abs().max(), "20 DPM-Solver++ steps should match 50 DDIM steps"
    assert (ddim20_cov - SIGMA).abs().max() > DDIM_BIAS, "control: DDIM at 20 steps misses the budget"
    assert (mean - exact_mean).abs().max() < MEAN_TOL
    assert (cov - exact_cov).abs().max() < COV_MC_TOL


@pytest.mark.parametrize("name", list(PROCESSES))
def test_ddim_50_steps_reproduces_gaussian(name):
    diffusion = PROCESSES[name]
    sampler = DDIMSampler(diffusion, eta=0.0, steps=50)
    model = exact_eps_predictor(diffusion, MU, SIGMA)
    x = sample(model, sampler, (N, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, cov = moments(x)
    assert (mean - MU).abs().max() < MEAN_TOL
    assert (cov - SIGMA).abs().max() < COV_MC_TOL + DDIM_BIAS

    exact_mean, exact_cov = ddim_push_forward(sampler, model)
    assert (exact_cov - SIGMA).abs().max() < DDIM_BIAS, "discretisation bias larger than the budget above"
    assert (mean - exact_mean).abs().max() < MEAN_TOL
    assert (cov - exact_cov).abs().max() < COV_MC_TOL


@pytest.mark.parametrize("name", list(PROCESSES))
def test_ddpm_1000_steps_reproduces_gaussian(name):
    diffusion = PROCESSES[name]
    sampler = DDPMSampler(diffusion, steps=1000)
    x = sample(
        exact_eps_predictor(diffusion, MU, SIGMA),
        sampler,
        (N, 2),
        torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    mean, cov = moments(x)
    assert (mean - MU).abs().max() < MEAN_TOL
    assert (cov - SIGMA).abs().max() < COV_MC_TOL


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_other_parameterisations_of_the_exact_denoiser(prediction):
    """The same exact denoiser expressed as v or x0 must give the same DDIM samples."""
    eps_process = PROCESSES["cosine"]
    other = GaussianDiffusion("cosine", prediction_type=prediction)
    eps_model = exact_eps_predictor(eps_process, MU, SIGMA)

    def model(x, t, labels=None):
        x0, eps = eps_process.predict_x0_eps(eps_model(x, t), x, t)
        return other.model_output_from(x0, eps, t)

    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = sample(eps_model, DDIMSampler(eps_process, steps=50), (4000, 2), noise=noise, dtype=torch.float64)
    converted = sample(model, DDIMSampler(other, steps=50), (4000, 2), noise=noise, dtype=torch.float64)
    torch.testing.assert_close(converted, reference, rtol=1e-7, atol=1e-7)


def test_wrong_predictor_fails_the_same_checks():
    """Negative control: the tolerances above do detect a denoiser for the wrong covariance."""
    diffusion = PROCESSES["linear"]
    wrong = exact_eps_predictor(diffusion, MU, SIGMA * 1.3)
    x = sample(wrong, DDPMSampler(diffusion, steps=1000), (N, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    _, cov = moments(x)
    assert (cov - SIGMA).abs().max() > COV_MC_TOL + DDIM_BIAS
