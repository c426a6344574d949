"""The Gaussian diffusion process: schedule, forward noising and the eps / v / x0 parameterisations.

Notation (DDPM): ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` and

    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps.

The network predicts one of

    eps:  the noise,
    v:    sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0   (Salimans & Ho),
    x0:   the clean sample,

and :meth:`GaussianDiffusion.predict_x0_eps` turns any of them back into ``(x0, eps)``, which is
all the samplers need. This object holds no parameters and is not an ``nn.Module``: its tables
live in float64 on the CPU and are gathered to the input's device and dtype on use, so they are
never part of a checkpoint's weights.
"""

from __future__ import annotations

import torch

from spectral_diffusion.diffusion.schedules import make_betas

PREDICTION_TYPES = ("eps", "v", "x0")


class GaussianDiffusion:
    """A discrete-time Gaussian diffusion with ``num_timesteps`` steps.

    Args:
        schedule: ``linear``, ``scaled_linear`` or ``cosine`` (see ``schedules.make_betas``).
        num_timesteps: number of training timesteps T; timesteps are integers in ``[0, T)``.
        beta_start, beta_end: ends of the linear schedules.
        prediction_type: what the network predicts: ``eps``, ``v`` or ``x0``.
    """

    def __init__(
        self,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "eps",
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")
        self.schedule = schedule
        self.num_timesteps = num_timesteps
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.prediction_type = prediction_type
        self.betas = make_betas(schedule, num_timesteps, beta_start, beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        # alpha_bar with a leading 1 for t = -1, so that "before the first step" is a plain lookup.
        self._alpha_bar_table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])

    def describe(self) -> dict:
        """The settings that define this process (compared between teacher and student, logged)."""
        return {
            "schedule": self.schedule,
            "num_timesteps": self.num_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": self.prediction_type,
        }

    # -- tables -----------------------------------------------------------------------------------
    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps ``t`` (shape ``(N,)``), shaped to broadcast against ``like``.

        A negative timestep means "before the first step", where alpha_bar is 1.
        """
        values = self._alpha_bar_table[(t.detach().cpu().long() + 1).clamp(min=0)]
        return values.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at timesteps ``t`` (float64)."""
        a = self.alphas_cumprod[t.detach().cpu().long()]
        return a / (1 - a)

    # -- forward process --------------------------------------------------------------------------
    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` training timesteps drawn uniformly from ``[0, T)`` (on the CPU)."""
        return torch.randint(0, self.num_timesteps, (n,), generator=generator)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x0)`` with the given noise."""
        a = self.alpha_bar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    # -- parameterisations ------------------------------------------------------------------------
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for ``x_t = add_noise(x0, noise, t)``."""
        if self.prediction_type == "eps":
            return noise
        if self.prediction_type == "x0":
            return x0
        a = self.alpha_bar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def predict_x0_eps(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a network output of this process's prediction type into ``(x0, eps)``."""
        a = self.alpha_bar(t, x_t)
        sa, s1a = a.sqrt(), (1 - a).sqrt()
        if self.prediction_type == "eps":
            eps = model_output
            x0 = (x_t - s1a * eps) / sa
        elif self.prediction_type == "x0":
            x0 = model_output
            eps = (x_t - sa * x0) / s1a
        else:  # v: x0 = sqrt(a) x_t - sqrt(1-a) v, eps = sqrt(1-a) x_t + sqrt(a) v
            x0 = sa * x_t - s1a * model_output
            eps = s1a * x_t + sa * model_output
        return x0, eps

    def model_output_from(
        self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prediction_type: str | None = None
    ) -> torch.Tensor:
        """The output a network of ``prediction_type`` (default: this process's) would give for ``(x0, eps)``.

        Together with :meth:`predict_x0_eps` this converts between parameterisations, e.g. a
        v-predicting teacher and an eps-predicting student.
        """
        kind = prediction_type or self.prediction_type
        if kind == "eps":
            return eps
        if kind == "x0":
            return x0
        if kind == "v":
            a = self.alpha_bar(t, x0)
            return a.sqrt() * eps - (1 - a).sqrt() * x0
        raise ValueError(f"unknown prediction_type {kind!r}; choose one of {list(PREDICTION_TYPES)}")
