"""Noise schedules: the betas of a discrete-time DDPM with ``num_timesteps`` steps.

All schedules are computed in float64 and match diffusers' ``beta_schedule`` options of the same
name (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``); the tests check that.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "scaled_linear", "cosine")


def make_betas(
    schedule: str,
    num_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Betas of length ``num_timesteps`` (float64).

    - ``linear``: evenly spaced betas from ``beta_start`` to ``beta_end`` (DDPM: 1e-4 to 0.02).
    - ``scaled_linear``: evenly spaced *square roots* of the betas, which is what the LDM configs
      call ``linear`` (LDM uses ``beta_start=0.0015``, ``beta_end=0.0195``).
    - ``cosine``: Nichol & Dhariwal's cosine schedule of alpha-bar with offset ``cosine_s``,
      betas capped at ``max_beta`` (diffusers' ``squaredcos_cap_v2``).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if schedule == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
            for i in range(num_timesteps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {list(SCHEDULES)}")
