"""Samplers with diffusers' scheduler interface: ``set_timesteps``, ``timesteps`` and ``step``.

Both samplers take the network's raw output (eps, v or x0, whatever the process predicts) and
convert it through :class:`GaussianDiffusion`. Their update rules and timestep spacings follow
diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` so that the tests can check them step by step;
the one deliberate difference is that when ``clip_sample`` is on, DDIM recomputes eps from the
clipped x0 (diffusers' ``use_clipped_model_output=True``), which keeps the update consistent.

:func:`sample` runs the whole reverse process for a network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spectral_diffusion.diffusion.process import GaussianDiffusion

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

#: ``(x_t, t, class_labels) -> model output``; a network, or a wrapper such as guidance.
Denoiser = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


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
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


def _randn_like(sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device (the CPU by default) so results do not depend on the GPU.
    device = generator.device if generator is not None else sample.device
    return torch.randn(sample.shape, generator=generator, device=device, dtype=sample.dtype).to(sample.device)


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
    """DDIM (Song et al.): deterministic at ``eta=0``, DDPM-like noise at ``eta=1``."""

    def __init__(self, diffusion: GaussianDiffusion, eta: float = 0.0, **kwargs) -> None:
        self.eta = eta
        super().__init__(diffusion, **kwargs)

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


@torch.no_grad()
def sample(
    model: Denoiser,
    sampler: Sampler,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    class_labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise and return x0 samples of ``shape``.

    The initial noise (and the sampler's noise) is drawn from ``generator`` on its own device, so a
    seeded CPU generator gives the same samples on any accelerator.
    """
    x = noise if noise is not None else torch.randn(shape, generator=generator, dtype=dtype)
    x = x.to(device=device, dtype=dtype)
    for t in sampler.timesteps.tolist():
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
        x = sampler.step(model(x, t_batch, class_labels), t, x, generator)
    return x
