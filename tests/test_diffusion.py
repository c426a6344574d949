"""The diffusion process and samplers against diffusers' schedulers, and their algebra."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from spectral_diffusion.diffusion import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverPlusPlusSampler,
    GaussianDiffusion,
    dpm_solver_timesteps,
    make_betas,
    sample,
    spaced_timesteps,
)

SCHEDULES = [  # (ours, diffusers' name, beta_start, beta_end)
    ("linear", "linear", 1e-4, 0.02),
    ("scaled_linear", "scaled_linear", 0.0015, 0.0195),  # the LDM schedule
    ("cosine", "squaredcos_cap_v2", 1e-4, 0.02),
]
PREDICTIONS = [("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")]


@pytest.mark.parametrize("ours,theirs,start,end", SCHEDULES)
def test_alphas_cumprod_match_diffusers(ours, theirs, start, end):
    diffusion = GaussianDiffusion(ours, 1000, start, end)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=start, beta_end=end, beta_schedule=theirs)
    torch.testing.assert_close(diffusion.alphas_cumprod.float(), reference.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_ldm_schedule_known_values():
    betas = make_betas("scaled_linear", 1000, 0.0015, 0.0195)
    assert betas[0].item() == pytest.approx(0.0015)
    assert betas[-1].item() == pytest.approx(0.0195)
    # The square roots, not the betas, are evenly spaced.
    assert betas[499].item() == pytest.approx((0.0015**0.5 + (0.0195**0.5 - 0.0015**0.5) * 499 / 999) ** 2)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        make_betas("quadratic")


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 50, 37])
def test_timestep_spacing_matches_diffusers(spacing, steps):
    reference = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    reference.set_timesteps(steps)
    assert spaced_timesteps(1000, steps, spacing).tolist() == reference.timesteps.tolist()


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_parameterisations_round_trip(prediction):
    diffusion = GaussianDiffusion("cosine", prediction_type=prediction)
    gen = torch.Generator().manual_seed(0)
    x0, noise = (
        torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64),
        torch.randn(6, 2, 4, 4, generator=gen, dtype=torch.float64),
    )
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    x_t = diffusion.add_noise(x0, noise, t)
    target = diffusion.training_target(x0, noise, t)
    x0_hat, eps_hat = diffusion.predict_x0_eps(target, x_t, t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)
    # Converting to another parameterisation and back is exact too.
    for other in ("eps", "v", "x0"):
        out = diffusion.model_output_from(x0, noise, t, other)
        torch.testing.assert_close(
            GaussianDiffusion("cosine", prediction_type=other).predict_x0_eps(out, x_t, t)[0], x0
        )


def test_add_noise_matches_diffusers():
    diffusion = GaussianDiffusion("scaled_linear", 1000, 0.0015, 0.0195)
    reference = DDPMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear")
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(
        diffusion.add_noise(x0, noise, t), reference.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5
    )


def fake_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """A smooth deterministic stand-in for a network, the same for both samplers."""
    return torch.tanh(x) * 0.8 + 0.1 * torch.cos(x * 3 + t / 100)


def run_trajectories(ours, theirs, step_kwargs, seed=0, shape=(2, 3, 8, 8)):
    x_ours = torch.randn(shape, generator=torch.Generator().manual_seed(123))
    x_theirs = x_ours.clone()
    g_ours, g_theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    for t in ours.timesteps.tolist():
        x_ours = ours.step(fake_model(x_ours, t), t, x_ours, g_ours)
        x_theirs = theirs.step(fake_model(x_theirs, t), t, x_theirs, generator=g_theirs, **step_kwargs).prev_sample
        torch.testing.assert_close(x_ours, x_theirs, rtol=1e-4, atol=1e-4, msg=f"diverged at t={t}")


@pytest.mark.parametrize("prediction,theirs_prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_steps_match_diffusers(prediction, theirs_prediction, eta, spacing):
    diffusion = GaussianDiffusion("scaled_linear", 1000, 0.0015, 0.0195, prediction)
    ours = DDIMSampler(diffusion, eta=eta, steps=25, timestep_spacing=spacing)
    theirs = DDIMScheduler(
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=theirs_prediction,
        timestep_spacing=spacing,
        set_alpha_to_one=True,
    )
    theirs.set_timesteps(25)
    run_trajectories(ours, theirs, {"eta": eta})


def test_ddim_clipping_matches_diffusers_clipped_model_output():
    diffusion = GaussianDiffusion("linear")
    ours = DDIMSampler(diffusion, eta=0.3, steps=20, clip_sample=True, clip_sample_range=1.0)
    theirs = DDIMScheduler(clip_sample=True, clip_sample_range=1.0)
    theirs.set_timesteps(20)
    run_trajectories(ours, theirs, {"eta": 0.3, "use_clipped_model_output": True})


@pytest.mark.parametrize("prediction,theirs_prediction", PREDICTIONS)
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_steps_match_diffusers(prediction, theirs_prediction, variance):
    diffusion = GaussianDiffusion("linear", 1000, 1e-4, 0.02, prediction)
    ours = DDPMSampler(diffusion, variance_type=variance, steps=1000, clip_sample=True)
    theirs = DDPMScheduler(variance_type=variance, prediction_type=theirs_prediction, clip_sample=True)
    theirs.set_timesteps(1000)
    run_trajectories(ours, theirs, {}, shape=(1, 2, 4, 4))


def test_respaced_ddpm_matches_diffusers():
    diffusion = GaussianDiffusion("cosine")
    ours = DDPMSampler(diffusion, steps=40, clip_sample=False)
    theirs = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    theirs.set_timesteps(40)
    run_trajectories(ours, theirs, {})


def test_bad_step_count_is_named():
    with pytest.raises(ValueError, match="num_inference_steps must be in"):
        DDIMSampler(GaussianDiffusion(), steps=0)


# -- DPM-Solver++ ----------------------------------------------------------------------------------


def dpm_pair(prediction, theirs_prediction, spacing, steps, schedule=SCHEDULES[1], **options):
    """Our DPM-Solver++ and diffusers' DPMSolverMultistepScheduler, configured alike."""
    ours_schedule, theirs_schedule, start, end = schedule
    diffusion = GaussianDiffusion(ours_schedule, 1000, start, end, prediction)
    ours = DPMSolverPlusPlusSampler(diffusion, steps=steps, timestep_spacing=spacing, **options)
    theirs = DPMSolverMultistepScheduler(
        beta_start=start,
        beta_end=end,
        beta_schedule=theirs_schedule,
        algorithm_type="dpmsolver++",
        solver_order=options.get("solver_order", 2),
        solver_type=options.get("solver_type", "midpoint"),
        lower_order_final=options.get("lower_order_final", True),
        final_sigmas_type=options.get("final_sigma", "zero"),
        prediction_type=theirs_prediction,
        timestep_spacing=spacing,
    )
    theirs.set_timesteps(steps)
    return ours, theirs


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [7, 20, 37])
def test_dpm_solver_timesteps_match_diffusers(spacing, steps):
    _, theirs = dpm_pair("eps", "epsilon", spacing, steps)
    assert dpm_solver_timesteps(1000, steps, spacing).tolist() == theirs.timesteps.tolist()


@pytest.mark.parametrize("prediction,theirs_prediction", PREDICTIONS)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpm_solver_steps_match_diffusers(prediction, theirs_prediction, spacing, steps):
    ours, theirs = dpm_pair(prediction, theirs_prediction, spacing, steps)
    run_trajectories(ours, theirs, {})


@pytest.mark.parametrize("schedule", SCHEDULES, ids=[s[0] for s in SCHEDULES])
@pytest.mark.parametrize(
    "options",
    [
        {"solver_type": "heun"},
        {"final_sigma": "sigma_min"},
        {"final_sigma": "sigma_min", "lower_order_final": False},
        {"solver_order": 1},
    ],
    ids=["heun", "sigma_min", "sigma_min_no_lower_order_final", "first_order"],
)
def test_dpm_solver_options_match_diffusers(schedule, options):
    # "leading" stays below t = 999, where the cosine schedule's alpha_bar is 2e-9: there x0 = x / 5e-5
    # and float32 rounding in diffusers' sigmas alone moves the result by more than the tolerance.
    ours, theirs = dpm_pair("eps", "epsilon", "leading", 10, schedule=schedule, **options)
    run_trajectories(ours, theirs, {})


def test_dpm_solver_first_order_is_ddim():
    """DPM-Solver++ 1 is DDIM (eta = 0) on the same timesteps: the exponential integrator's first step."""
    diffusion = GaussianDiffusion("scaled_linear", 1000, 0.0015, 0.0195, "v")
    dpm = DPMSolverPlusPlusSampler(diffusion, steps=12, solver_order=1)
    ddim = DDIMSampler(diffusion, eta=0.0, steps=12)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t, t_next in zip(dpm.timesteps.tolist(), dpm.timesteps.tolist()[1:] + [-1], strict=True):
        ddim._previous = {t: t_next}  # DDIM visiting the solver's timesteps
        torch.testing.assert_close(dpm.step(fake_model(x, t), t, x), ddim.step(fake_model(x, t), t, x))
        x = dpm.step(fake_model(x, t), t, x)


def test_dpm_solver_restarts_cleanly_between_runs():
    """The multistep history from one run must not leak into the next: two runs agree exactly."""
    ours, _ = dpm_pair("eps", "epsilon", "linspace", 10)
    model = lambda x, t, labels=None: fake_model(x, int(t[0]))  # noqa: E731
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    first = sample(model, ours, tuple(noise.shape), noise=noise)
    second = sample(model, ours, tuple(noise.shape), noise=noise)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_dpm_solver_rejects_foreign_timesteps_and_bad_options():
    ours, _ = dpm_pair("eps", "epsilon", "linspace", 10)
    with pytest.raises(ValueError, match="timestep 3 is not one of this sampler's timesteps"):
        ours.step(torch.zeros(1, 1), 3, torch.zeros(1, 1))
    with pytest.raises(ValueError, match="unknown solver_type 'rk4'"):
        DPMSolverPlusPlusSampler(GaussianDiffusion(), solver_type="rk4")
    with pytest.raises(ValueError, match="solver_order must be 1 or 2"):
        DPMSolverPlusPlusSampler(GaussianDiffusion(), solver_order=3)
    with pytest.raises(ValueError, match="unknown final_sigma 'one'"):
        DPMSolverPlusPlusSampler(GaussianDiffusion(), final_sigma="one")


@pytest.mark.parametrize("steps", [25, 37, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_linspace_ddim_steps_to_t_minus_T_over_n_as_diffusers(steps, eta):
    """diffusers' DDIMScheduler steps from t to t - T//n, not to the next visited linspace timestep."""
    diffusion = GaussianDiffusion("scaled_linear", 1000, 0.0015, 0.0195, "eps")
    ours = DDIMSampler(diffusion, eta=eta, steps=steps, timestep_spacing="linspace")
    theirs = DDIMScheduler(
        beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
        timestep_spacing="linspace", set_alpha_to_one=True,
    )  # fmt: skip
    theirs.set_timesteps(steps)
    assert ours.previous_timestep(999) == 999 - 1000 // steps
    run_trajectories(ours, theirs, {"eta": eta})


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_compvis_ddim_grid_matches_diffusers_steps_offset_and_final_alpha(eta):
    """CompVis' grid: timesteps 1, 21, ..., 981 for 50 steps, and the last step lands on alphas_cumprod[0]."""
    diffusion = GaussianDiffusion("scaled_linear", 1000, 0.0015, 0.0195, "eps")
    ours = DDIMSampler(diffusion, eta=eta, steps=50, steps_offset=1, set_alpha_to_one=False)
    assert ours.timesteps.tolist() == list(range(981, 0, -20))
    theirs = DDIMScheduler(
        beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False,
        steps_offset=1, set_alpha_to_one=False,
    )  # fmt: skip
    theirs.set_timesteps(50)
    run_trajectories(ours, theirs, {"eta": eta})


def test_compvis_final_step_by_hand():
    """From t=1 the last deterministic step goes to 'timestep -19', whose alpha_bar is alphas_cumprod[0]:
    x = sqrt(a0) x0 + sqrt(1 - a0) eps, with x0 = (x_1 - sqrt(1 - a1) eps) / sqrt(a1)."""
    diffusion = GaussianDiffusion("scaled_linear", 1000, 0.0015, 0.0195, "eps")
    sampler = DDIMSampler(diffusion, eta=0.0, steps=50, steps_offset=1, set_alpha_to_one=False)
    x1 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    eps = torch.tensor([[0.5, 0.1]], dtype=torch.float64)
    a0, a1 = diffusion.alphas_cumprod[0].item(), diffusion.alphas_cumprod[1].item()
    x0 = (x1 - (1 - a1) ** 0.5 * eps) / a1**0.5
    expected = a0**0.5 * x0 + (1 - a0) ** 0.5 * eps
    torch.testing.assert_close(sampler.step(eps, 1, x1), expected, rtol=1e-12, atol=1e-12)
    with_one = DDIMSampler(diffusion, eta=0.0, steps=50, steps_offset=1)
    torch.testing.assert_close(with_one.step(eps, 1, x1), x0, rtol=1e-12, atol=1e-12)  # alpha_bar 1: x0 itself


def test_an_offset_past_the_last_timestep_is_refused():
    with pytest.raises(ValueError, match="steps_offset=1 puts the first of 1000 steps at t=1000"):
        DDIMSampler(GaussianDiffusion("linear"), steps=1000, steps_offset=1)
