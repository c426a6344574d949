"""Samplers with diffusers' scheduler interface: ``set_timesteps``, ``timesteps`` and ``step``.

All samplers (DDPM, DDIM and DPM-Solver++ 2M) take the network's raw output (eps, v or x0,
whatever the process predicts) and convert it through :class:`GaussianDiffusion`. Their update
rules and timestep spacings follow diffusers' ``DDPMScheduler``, ``DDIMScheduler`` and
``DPMSolverMultistepScheduler`` so that the tests can check them step by step; the one deliberate
difference is that when ``clip_sample`` is on, DDIM recomputes eps from the clipped x0 (diffusers'
``use_clipped_model_output=True``), which keeps the update consistent.

:func:`sample` runs the whole reverse process for a network, with classifier-free guidance
(``guidance.py``) if asked. Noise comes from one generator, from one generator per sample, or from
per-sample counter-based streams on the device (``noise.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance, call_denoiser, check_class_labels
from spectral_diffusion.diffusion.noise import CounterNoise
from spectral_diffusion.diffusion.process import GaussianDiffusion

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

#: ``(x_t, t, class_labels) -> model output``; a network, or a wrapper such as guidance.
Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

#: Where noise comes from: one generator for the batch, None (the global RNG), one per sample, or
#: per-sample counter-based streams computed on the device (:class:`CounterNoise`).
Generators = torch.Generator | Sequence[torch.Generator] | CounterNoise | None


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading") -> torch.Tensor:
    """Descending inference timesteps, spaced as diffusers' ``timestep_spacing`` option does."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be in [1, {num_train_timesteps}] (the training timesteps), "
            f"got {num_inference_steps}"
        )
    T, n = num_train_timesteps, num_inference_steps
    if spacing == "leading":
        steps = torch.arange(n, dtype=torch.float64) * (T // n)
    elif spacing == "trailing":
        steps = (torch.arange(T, 0, -T / n, dtype=torch.float64) - 1).flip(0)
    elif spacing == "linspace":
        steps = torch.linspace(0, T - 1, n, dtype=torch.float64)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of {list(TIMESTEP_SPACINGS)}")
    return steps.round().long().flip(0)


class Sampler:
    """Shared state of the samplers: the process, the inference timesteps and x0 clipping."""

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        steps: int = 50,
        timestep_spacing: str = "leading",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
    ) -> None:
        self.diffusion = diffusion
        self.timestep_spacing = timestep_spacing
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self.set_timesteps(steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the ``num_inference_steps`` timesteps that sampling visits, in descending order."""
        self.num_inference_steps = num_inference_steps
        self.timesteps = spaced_timesteps(self.diffusion.num_timesteps, num_inference_steps, self.timestep_spacing)
        # The step after the last one is -1, where alpha_bar is 1 (diffusers' set_alpha_to_one).
        self._previous = dict(zip(self.timesteps.tolist(), self.timesteps[1:].tolist() + [-1], strict=True))
        self.reset()

    def reset(self) -> None:
        """Forget any state carried between steps; :func:`sample` calls it before every run.

        DDPM and DDIM are one-step methods and carry none; multistep solvers override this.
        """

    def previous_timestep(self, timestep: int) -> int:
        return self._previous[int(timestep)]

    def _alpha_bars(self, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 alpha_bar at ``timestep`` and at the step the sampler goes to next."""
        t = torch.tensor([int(timestep), self.previous_timestep(timestep)])
        a = self.diffusion.alpha_bar(t, torch.empty(2, dtype=torch.float64))
        return a[0], a[1]

    def _x0_eps(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) predicted from the model output; x0 clipped if ``clip_sample``."""
        t = torch.full((sample.shape[0],), int(timestep))
        x0, eps = self.diffusion.predict_x0_eps(model_output, sample, t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0, eps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: Generators = None,
    ) -> torch.Tensor:
        """x at the next (less noisy) timestep; noise, if any, is drawn as :func:`randn` does."""
        raise NotImplementedError


def randn(
    shape: tuple[int, ...] | torch.Size,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn from ``generator``.

    ``generator`` is one ``torch.Generator``, None (the global RNG, drawn on the CPU), or a list of
    generators, one per row of ``shape[0]``: row i is then drawn from generator i alone, so a sample
    depends only on its own seed and not on the batch it is generated in (as diffusers'
    ``randn_tensor`` does). Draws happen on each generator's own device (the CPU for the usual
    seeded generators) and are then moved, so a CPU seed gives the same noise on any accelerator.
    A :class:`CounterNoise` computes each row's next draw from its (seed, index) on ``device`` itself.
    """
    if isinstance(generator, CounterNoise):
        return generator.randn(tuple(shape), device, dtype)
    if generator is None or isinstance(generator, torch.Generator):
        draw_device = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype).to(device)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(
            f"got a list of {len(generators)} generators for a batch of {shape[0]} samples; "
            "pass one generator per sample, a single generator, or None"
        )
    if not all(isinstance(g, torch.Generator) for g in generators):
        raise TypeError("generator lists must hold torch.Generator objects only")
    rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype).to(device) for g in generators]
    return torch.cat(rows)


def _randn_like(sample: torch.Tensor, generator: Generators) -> torch.Tensor:
    if generator is None:  # the global RNG on the sample's own device, as before per-sample seeding
        return torch.randn(sample.shape, device=sample.device, dtype=sample.dtype)
    return randn(sample.shape, generator, sample.device, sample.dtype)


class DDPMSampler(Sampler):
    """Ancestral sampling from the posterior q(x_{t'} | x_t, x0) (Ho et al.), on any timestep subset.

    ``variance_type`` is ``fixed_small`` (posterior variance, beta-tilde) or ``fixed_large`` (beta).
    """

    def __init__(self, diffusion: GaussianDiffusion, variance_type: str = "fixed_small", **kwargs) -> None:
        if variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(f"unknown variance_type {variance_type!r}; choose fixed_small or fixed_large")
        self.variance_type = variance_type
        kwargs.setdefault("steps", diffusion.num_timesteps)
        super().__init__(diffusion, **kwargs)

    def step(self, model_output, timestep, sample, generator=None):
        a_t, a_prev = self._alpha_bars(timestep)
        alpha_t = a_t / a_prev  # alpha of the (possibly skipped-over) transition t -> t'
        beta_t = 1 - alpha_t
        x0, _ = self._x0_eps(model_output, timestep, sample)
        x0_coef = (a_prev.sqrt() * beta_t / (1 - a_t)).item()
        xt_coef = (alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)).item()
        mean = x0_coef * x0 + xt_coef * sample
        if int(timestep) <= 0:
            return mean
        if self.variance_type == "fixed_small":
            variance = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
        else:
            variance = beta_t
        return mean + variance.sqrt().item() * _randn_like(sample, generator)


class DDIMSampler(Sampler):
    """DDIM (Song et al.): deterministic at ``eta=0``, DDPM-like noise at ``eta=1``.

    Each step goes from ``t`` to ``t - T // steps``, whatever the spacing, as diffusers'
    ``DDIMScheduler.step`` does; for ``leading`` and ``trailing`` spacing that is the next visited
    timestep, for ``linspace`` it is not (the visited timesteps are ``(T-1)/(steps-1)`` apart), and
    diffusers' rule is what this sampler follows, so its trajectories equal diffusers' for every spacing.

    Args:
        eta: the noise scale (0: deterministic).
        steps_offset: added to the ``leading`` timesteps (diffusers' ``steps_offset``); CompVis'
            LDM DDIM grid is ``steps_offset=1``: timesteps 1, 1 + T/n, ..., as their
            ``make_ddim_timesteps`` makes them.
        set_alpha_to_one: alpha_bar after the last step is 1 (``true``), or ``alphas_cumprod[0]``,
            CompVis' final alpha (diffusers' ``set_alpha_to_one=False``).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        eta: float = 0.0,
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
        **kwargs,
    ) -> None:
        self.eta = eta
        self.steps_offset = int(steps_offset)
        self.set_alpha_to_one = bool(set_alpha_to_one)
        super().__init__(diffusion, **kwargs)

    def set_timesteps(self, num_inference_steps: int) -> None:
        super().set_timesteps(num_inference_steps)
        if self.steps_offset and self.timestep_spacing == "leading":
            last = int(self.timesteps[0]) + self.steps_offset
            if last >= self.diffusion.num_timesteps:
                raise ValueError(
                    f"steps_offset={self.steps_offset} puts the first of {num_inference_steps} steps at t={last}, "
                    f"past the last training timestep {self.diffusion.num_timesteps - 1}; use fewer steps or no offset"
                )
            self.timesteps = self.timesteps + self.steps_offset
        stride = self.diffusion.num_timesteps // num_inference_steps
        self._previous = {t: t - stride for t in self.timesteps.tolist()}

    def _alpha_bars(self, timestep: int) -> tuple[torch.Tensor, torch.Tensor]:
        a_t, a_prev = super()._alpha_bars(timestep)
        if self.previous_timestep(timestep) < 0 and not self.set_alpha_to_one:
            a_prev = self.diffusion.alphas_cumprod[0].to(torch.float64)
        return a_t, a_prev

    def step(self, model_output, timestep, sample, generator=None):
        a_t, a_prev = self._alpha_bars(timestep)
        x0, eps = self._x0_eps(model_output, timestep, sample)
        if self.clip_sample:  # keep eps consistent with the clipped x0
            eps = (sample - a_t.sqrt().item() * x0) / (1 - a_t).sqrt().item()
        sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt().item()
        prev = a_prev.sqrt().item() * x0 + direction * eps
        if self.eta > 0 and sigma > 0:
            prev = prev + sigma.item() * _randn_like(sample, generator)
        return prev


DPM_SOLVER_TYPES = ("midpoint", "heun")
FINAL_SIGMAS = ("zero", "sigma_min")


def dpm_solver_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "linspace") -> torch.Tensor:
    """Descending timesteps as diffusers' ``DPMSolverMultistepScheduler`` spaces them.

    They differ from DDIM's: ``linspace`` and ``leading`` split the range into ``n + 1`` parts and
    drop timestep 0, because the solver's last step goes on to sigma = 0 (or sigma_min) by itself.
    """
    T, n = num_train_timesteps, num_inference_steps
    if not 1 <= n < T:
        raise ValueError(f"num_inference_steps must be in [1, {T - 1}] for DPM-Solver++, got {n}")
    if spacing == "linspace":
        # numpy, not torch: its float64 arange/linspace and rounding are what diffusers uses
        steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    elif spacing == "leading":
        steps = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1]
    elif spacing == "trailing":
        steps = np.arange(T, 0, -T / n).round() - 1
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of {list(TIMESTEP_SPACINGS)}")
    timesteps = torch.from_numpy(steps.astype(np.int64).copy())
    if len(timesteps.unique()) != len(timesteps):
        raise ValueError(f"{n} steps with timestep_spacing={spacing!r} repeat timesteps; use fewer steps")
    return timesteps


class DPMSolverPlusPlusSampler(Sampler):
    """DPM-Solver++ (Lu et al. 2022), multistep, on the data (x0) prediction; 2M by default.

    In log-SNR time lambda = log(alpha / sigma), with alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)
    and h = lambda_next - lambda_now, the first-order step is DDIM's,

        x_next = (sigma_next / sigma_now) x - alpha_next (e^-h - 1) x0,

    and the second-order multistep ("2M") step adds the finite difference of the last two x0
    predictions, D1 = (x0 - x0_prev) / r with r = h_prev / h, weighted by ``solver_type``
    (midpoint: -0.5 alpha_next (e^-h - 1); heun: alpha_next ((e^-h - 1) / h + 1)). The first step
    has no history and is first order; so is the last one when ``final_sigma="zero"`` (r would be 0
    there), or when ``lower_order_final`` and fewer than 15 steps (for stability), as in diffusers.

    The solver carries the previous x0 between calls of :meth:`step`, keyed by its timestep: a step
    uses it only if it was made at the timestep just before, so a new run restarts cleanly.
    Timesteps follow :func:`dpm_solver_timesteps`; the coefficients are computed in float64.

    Args:
        solver_order: 1 (DPM-Solver++ 1, i.e. DDIM) or 2 (2M).
        solver_type: ``midpoint`` or ``heun``, the second-order weighting (diffusers' names).
        lower_order_final: first-order final step for fewer than 15 steps.
        final_sigma: ``zero`` (the last step lands on the data, alpha_bar = 1) or ``sigma_min``
            (it stops at timestep 0's noise level).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        steps: int = 20,
        timestep_spacing: str = "linspace",
        solver_order: int = 2,
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        final_sigma: str = "zero",
        **kwargs,
    ) -> None:
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2 for DPM-Solver++ multistep, got {solver_order}")
        if solver_type not in DPM_SOLVER_TYPES:
            raise ValueError(f"unknown solver_type {solver_type!r}; choose one of {list(DPM_SOLVER_TYPES)}")
        if final_sigma not in FINAL_SIGMAS:
            raise ValueError(f"unknown final_sigma {final_sigma!r}; choose one of {list(FINAL_SIGMAS)}")
        self.solver_order = solver_order
        self.solver_type = solver_type
        self.lower_order_final = lower_order_final
        self.final_sigma = final_sigma
        super().__init__(diffusion, steps=steps, timestep_spacing=timestep_spacing, **kwargs)

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = num_inference_steps
        self.timesteps = dpm_solver_timesteps(self.diffusion.num_timesteps, num_inference_steps, self.timestep_spacing)
        steps = self.timesteps.tolist()
        last = -1 if self.final_sigma == "zero" else 0  # alpha_bar(-1) = 1: sigma = 0
        self._previous = dict(zip(steps, steps[1:] + [last], strict=True))
        self._index = {t: i for i, t in enumerate(steps)}
        self.reset()

    def reset(self) -> None:
        self._history: tuple[int, torch.Tensor] | None = None  # (timestep, x0 predicted there)

    def _alpha_sigma_lambda(self, timestep: int) -> tuple[float, float, float]:
        a = self.diffusion.alpha_bar(torch.tensor([timestep]), torch.empty(1, dtype=torch.float64)).item()
        alpha, sigma = a**0.5, (1 - a) ** 0.5
        lam = math.log(alpha) - math.log(sigma) if sigma > 0 else math.inf
        return alpha, sigma, lam

    def step(self, model_output, timestep, sample, generator=None):
        timestep = int(timestep)
        if timestep not in self._index:
            raise ValueError(f"timestep {timestep} is not one of this sampler's timesteps {self.timesteps.tolist()}")
        index, n = self._index[timestep], self.num_inference_steps
        x0, _ = self._x0_eps(model_output, timestep, sample)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(timestep)
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.previous_timestep(timestep))
        # e^-h = (sigma_t alpha_s) / (alpha_t sigma_s), finite even when sigma_t = 0 (h infinite)
        exp_neg_h = (sigma_t * alpha_s) / (alpha_t * sigma_s)
        prev = (sigma_t / sigma_s) * sample - alpha_t * (exp_neg_h - 1.0) * x0

        lower_final = index == n - 1 and (self.final_sigma == "zero" or (self.lower_order_final and n < 15))
        history = self._history
        has_history = index > 0 and history is not None and history[0] == int(self.timesteps[index - 1])
        if self.solver_order == 2 and has_history and not lower_final:
            _, _, lambda_s1 = self._alpha_sigma_lambda(history[0])
            h, h_prev = lambda_t - lambda_s, lambda_s - lambda_s1
            d1 = (x0 - history[1]) * (h / h_prev)
            if self.solver_type == "midpoint":
                prev = prev - 0.5 * alpha_t * (exp_neg_h - 1.0) * d1
            else:
                prev = prev + alpha_t * ((exp_neg_h - 1.0) / h + 1.0) * d1
        self._history = (timestep, x0)
        return prev


@torch.no_grad()
def sample(
    model: Denoiser,
    sampler: Sampler,
    shape: tuple[int, ...],
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    class_labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    guidance: ClassifierFreeGuidance | float | None = None,
    context: torch.Tensor | None = None,
    uncond_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise and return x0 samples of ``shape``.

    The initial noise (and the sampler's noise) is drawn from ``generator`` on its own device, so a
    seeded CPU generator gives the same samples on any accelerator. With a list of generators, one
    per sample, each sample depends only on its own generator (see :func:`randn`).

    ``class_labels`` (one per sample, in ``[0, num_classes]`` where ``num_classes`` is "no class")
    and ``context`` (a sequence of embeddings, passed as ``context=`` to networks with
    cross-attention) are the condition. ``guidance`` turns on classifier-free guidance: this loop
    tells it the step index, so it knows when its truncation cuts in; a plain number is a guidance
    scale without truncation. ``uncond_context`` is the context of its unconditional prediction
    (e.g. the empty prompt's embeddings; None: none).
    """
    if guidance is not None and not isinstance(guidance, ClassifierFreeGuidance):
        guidance = ClassifierFreeGuidance(scale=float(guidance))
    num_classes = getattr(model, "num_classes", None)
    if class_labels is not None:
        check_class_labels(class_labels, shape[0], num_classes)
        class_labels = class_labels.to(device)
    if context is not None:
        context = context.to(device)
    if uncond_context is not None:
        uncond_context = uncond_context.to(device)
    x = noise if noise is not None else randn(shape, generator, device, dtype)
    x = x.to(device=device, dtype=dtype)
    sampler.reset()
    timesteps = sampler.timesteps.tolist()
    for i, t in enumerate(timesteps):
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        if guidance is None:
            output = call_denoiser(model, x, t_batch, class_labels, context)
        else:
            output = guidance.predict(
                model, x, t_batch, class_labels, i, len(timesteps), context, uncond_context, null_label=num_classes
            )
        x = sampler.step(output, t, x, generator)
    return x
