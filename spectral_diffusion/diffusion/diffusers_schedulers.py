"""A sampler of this framework as the diffusers scheduler that takes the same steps.

An exported model (``scripts/export.py format=diffusers``) carries its sampling in diffusers' own
terms: ``scheduler/scheduler_config.json`` of a ``DDIMScheduler``, ``DDPMScheduler`` or
``DPMSolverMultistepScheduler`` whose schedule, prediction type, timestep spacing and clipping are
those of the run. The samplers' update rules follow these schedulers (``samplers.py``, checked step
by step in tests/test_diffusion.py); the one difference, DDIM's eps recomputed from a clipped x0, is
diffusers' ``use_clipped_model_output=True``, which :func:`step_kwargs` asks for.

The number of steps and DDIM's eta are arguments of a diffusers pipeline's call, not of its
scheduler; :func:`sampling_defaults` gives them for the pipeline's config.
"""

from __future__ import annotations

from typing import Any

from spectral_diffusion.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverPlusPlusSampler, Sampler

#: Our schedule and parameterisation names -> diffusers'.
DIFFUSERS_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
#: Our final_sigma names -> DPMSolverMultistepScheduler's final_sigmas_type.
DIFFUSERS_FINAL_SIGMAS = {"zero": "zero", "sigma_min": "sigma_min"}


def scheduler_config(sampler: Sampler) -> tuple[str, dict[str, Any]]:
    """``(diffusers class name, constructor arguments)`` of the scheduler that samples as ``sampler`` does."""
    diffusion = sampler.diffusion
    if diffusion.schedule not in DIFFUSERS_BETA_SCHEDULES:
        raise ValueError(
            f"schedule {diffusion.schedule!r} has no diffusers equivalent; exportable are {sorted(DIFFUSERS_BETA_SCHEDULES)}"
        )
    common = {
        "num_train_timesteps": int(diffusion.num_timesteps),
        "beta_start": float(diffusion.beta_start),
        "beta_end": float(diffusion.beta_end),
        "beta_schedule": DIFFUSERS_BETA_SCHEDULES[diffusion.schedule],
        "prediction_type": DIFFUSERS_PREDICTION_TYPES[diffusion.prediction_type],
        "timestep_spacing": sampler.timestep_spacing,
    }
    if isinstance(sampler, DDIMSampler):
        return "DDIMScheduler", {
            **common,
            "clip_sample": bool(sampler.clip_sample),
            "clip_sample_range": float(sampler.clip_sample_range),
            "set_alpha_to_one": bool(sampler.set_alpha_to_one),
            "steps_offset": int(sampler.steps_offset),
        }
    if isinstance(sampler, DDPMSampler):
        return "DDPMScheduler", {
            **common,
            "clip_sample": bool(sampler.clip_sample),
            "clip_sample_range": float(sampler.clip_sample_range),
            "variance_type": sampler.variance_type,
        }
    if isinstance(sampler, DPMSolverPlusPlusSampler):
        if sampler.clip_sample:
            # diffusers' DPM-Solver has dynamic thresholding (a quantile), not a fixed clip of x0.
            raise ValueError(
                "sampler.clip_sample=true has no DPMSolverMultistepScheduler equivalent (diffusers' DPM-Solver has no "
                "fixed x0 clip); export with sampler.clip_sample=false, or with sampler=ddim"
            )
        return "DPMSolverMultistepScheduler", {
            **common,
            "algorithm_type": "dpmsolver++",
            "solver_order": int(sampler.solver_order),
            "solver_type": sampler.solver_type,
            "lower_order_final": bool(sampler.lower_order_final),
            "final_sigmas_type": DIFFUSERS_FINAL_SIGMAS[sampler.final_sigma],
        }
    raise ValueError(f"{type(sampler).__name__} has no diffusers scheduler equivalent; use sampler=ddim")


def build_scheduler(sampler: Sampler) -> Any:
    """The diffusers scheduler object of :func:`scheduler_config`."""
    import diffusers

    name, kwargs = scheduler_config(sampler)
    return getattr(diffusers, name)(**kwargs)


def sampling_defaults(sampler: Sampler) -> dict[str, Any]:
    """The call arguments a pipeline needs to sample as ``sampler`` does: steps, and eta for DDIM."""
    defaults: dict[str, Any] = {"num_inference_steps": int(sampler.num_inference_steps)}
    if isinstance(sampler, DDIMSampler):
        defaults["eta"] = float(sampler.eta)
    return defaults


def step_kwargs(scheduler_class: str, clip_sample: bool, eta: float | None) -> dict[str, Any]:
    """Extra arguments of ``scheduler.step`` that make it take this framework's step (see the module doc)."""
    if scheduler_class == "DDIMScheduler":
        return {"eta": 0.0 if eta is None else float(eta), "use_clipped_model_output": bool(clip_sample)}
    return {}
