"""The global batch: how it splits into devices, per-device micro-batches and gradient accumulation.

A run names the number of images per optimizer step over all devices (``batch.global_size``) and
the most one device may hold at once (``batch.per_device_max``). Then

    global_size = world_size x per_device x accumulate

with the fewest accumulation steps whose micro-batch fits. The learning rate is never changed
behind the user's back: ``batch.lr_scaling`` names a rule and ``batch.reference_size`` the global
batch that ``module.optimizer.lr`` was tuned for, and the run logs the rate it uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_SCALING_RULES = ("none", "linear", "sqrt")


class BatchConfigError(ValueError):
    """The batch settings cannot be met (the message names the keys and values)."""


@dataclass(frozen=True)
class BatchPlan:
    """One optimizer step: ``world_size`` devices x ``per_device`` images x ``accumulate`` micro-batches."""

    global_size: int
    world_size: int
    per_device: int
    accumulate: int

    def describe(self) -> str:
        return (
            f"global batch {self.global_size} = {self.world_size} device(s) x {self.per_device} per device "
            f"x {self.accumulate} accumulated micro-batch(es)"
        )


def plan_batches(global_size: int, per_device_max: int, world_size: int) -> BatchPlan:
    """The split of ``global_size`` images over ``world_size`` devices with micro-batches of at most ``per_device_max``.

    Accumulation is the smallest number of micro-batches that divides each device's share into
    equal micro-batches no larger than the limit.
    """
    for name, value in (
        ("batch.global_size", global_size),
        ("batch.per_device_max", per_device_max),
        ("world size", world_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BatchConfigError(f"{name}={value!r} must be a positive integer")
    if global_size % world_size:
        raise BatchConfigError(
            f"batch.global_size={global_size} does not split evenly over {world_size} devices "
            f"(trainer.devices x trainer.num_nodes); use a multiple of {world_size}, e.g. "
            f"{max(world_size, global_size // world_size * world_size)}"
        )
    share = global_size // world_size
    accumulate = next(a for a in range(math.ceil(share / per_device_max), share + 1) if share % a == 0)
    return BatchPlan(global_size, world_size, share // accumulate, accumulate)


def scaled_lr(lr: float, rule: str, global_size: int, reference_size: int | None) -> float:
    """``lr`` scaled from the ``reference_size`` global batch to ``global_size`` by ``rule``.

    ``linear`` multiplies by ``global_size / reference_size`` (Goyal et al. 2017), ``sqrt`` by its
    square root (the usual rule for Adam), ``none`` leaves the rate alone.
    """
    if rule not in LR_SCALING_RULES:
        raise BatchConfigError(f"batch.lr_scaling={rule!r} must be one of {', '.join(LR_SCALING_RULES)}")
    if rule == "none":
        return lr
    if not isinstance(reference_size, int) or reference_size < 1:
        raise BatchConfigError(
            f"batch.lr_scaling={rule} needs batch.reference_size: the global batch that module.optimizer.lr "
            f"was tuned for (got {reference_size!r})"
        )
    ratio = global_size / reference_size
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


def resolve_batch_plan(
    global_size: int | None, per_device_max: int | None, data_batch_size: int, accumulate: int, world_size: int
) -> BatchPlan:
    """The run's batch plan from its config.

    Without ``batch.global_size`` the per-device ``data.batch_size`` and
    ``trainer.accumulate_grad_batches`` stand as configured. With it, both are derived from the
    global size and ``batch.per_device_max`` (default ``data.batch_size``), so setting
    ``trainer.accumulate_grad_batches`` as well is a contradiction.
    """
    if global_size is None:
        return BatchPlan(data_batch_size * world_size * accumulate, world_size, data_batch_size, accumulate)
    if accumulate != 1:
        raise BatchConfigError(
            f"batch.global_size={global_size} derives the gradient accumulation, but "
            f"trainer.accumulate_grad_batches={accumulate} is set too; remove one of them"
        )
    return plan_batches(global_size, per_device_max if per_device_max is not None else data_batch_size, world_size)
