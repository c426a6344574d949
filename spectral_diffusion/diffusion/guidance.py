"""Classifier-free guidance (Ho & Salimans) with guidance truncation (Yi et al., NeurIPS 2024).

Guidance combines a conditional and an unconditional prediction of the same network,

    output = uncond + scale * (cond - uncond),

on the network's raw output. That is right for every parameterisation: eps, v and x0 are each
affine in the output with coefficients that depend only on (x_t, t), which both predictions
share, so guiding the raw output is the same as guiding eps (or v, or x0) and then converting.

Truncation: the overall shape of a sample is settled in the early, high-noise steps, so guidance
runs only while the step index i of N satisfies ``i / N < truncate_after``. After the cut-off each
step makes one network call: the unconditional prediction (``after="uncond"``, as the paper does)
or the conditional one (``after="cond"``). With ``truncate_after=0`` a run makes N calls, with 1
it makes 2N.

"No class" is what the UNet reads from ``class_labels=None`` or from the label value
``num_classes`` (a learned null embedding row); text conditioning passes a sequence of
embeddings as ``context=`` and the empty prompt's embeddings as the unconditional context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

GUIDANCE_AFTER = ("uncond", "cond")

#: A network called as ``model(x_t, t, class_labels)`` or ``model(x_t, t, class_labels, context=...)``.
ConditionalDenoiser = Callable[..., torch.Tensor]


def call_denoiser(
    model: ConditionalDenoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    class_labels: torch.Tensor | None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """``model(x, t, class_labels)``, with ``context=`` only when there is one.

    Networks without cross-attention do not take ``context``, so it is never passed as None.
    """
    if context is None:
        return model(x, t, class_labels)
    return model(x, t, class_labels, context=context)


def check_class_labels(class_labels: torch.Tensor, batch_size: int, num_classes: int | None) -> None:
    """Fail with a clear message unless ``class_labels`` is one integer label per sample in range.

    The valid range is ``[0, num_classes]``: the value ``num_classes`` is the null label ("no
    class"). With ``num_classes=None`` (a network that does not say) only the shape is checked.
    """
    if class_labels.dtype.is_floating_point or class_labels.dtype == torch.bool or class_labels.is_complex():
        raise ValueError(f"class_labels must be an integer tensor, got dtype {class_labels.dtype}")
    if class_labels.shape != (batch_size,):
        raise ValueError(
            f"class_labels must have shape ({batch_size},), one label per sample, got {tuple(class_labels.shape)}"
        )
    if num_classes is not None and len(class_labels) > 0:
        low, high = int(class_labels.min()), int(class_labels.max())
        if low < 0 or high > num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"class label {bad} is out of range: the network has num_classes={num_classes}, so labels "
                f"must be in [0, {num_classes - 1}] (or {num_classes}, the null label for 'no class')"
            )


def _expand_batch(context: torch.Tensor, batch_size: int, name: str) -> torch.Tensor:
    """A context for the whole batch; one shared row (e.g. the empty prompt's) is broadcast."""
    if context.shape[0] == batch_size:
        return context
    if context.shape[0] == 1:
        return context.expand(batch_size, *context.shape[1:])
    raise ValueError(f"{name} has batch size {context.shape[0]}; expected {batch_size} or 1")


@dataclass
class ClassifierFreeGuidance:
    """Classifier-free guidance settings, applied step by step by :func:`samplers.sample`.

    Args:
        scale: guidance weight w in ``uncond + w * (cond - uncond)``; 1 is the plain conditional
            prediction (one call), 0 the unconditional one (one call), > 1 sharpens the condition.
        truncate_after: fraction of the sampling steps, from the first, during which guidance
            runs; step i of N is guided while ``i / N < truncate_after``.
        after: the single prediction used after the cut-off: ``uncond`` or ``cond``.
        batch_cond_uncond: evaluate the two guided predictions in one forward pass over 2B rows
            (faster on a GPU) instead of two passes over B rows; the result is the same.
    """

    scale: float = 1.0
    truncate_after: float = 1.0
    after: str = "uncond"
    batch_cond_uncond: bool = False

    def __post_init__(self) -> None:
        if not self.scale >= 0:  # also catches NaN
            raise ValueError(f"guidance.scale must be >= 0 (1 = conditional, no guidance), got {self.scale}")
        if not 0.0 <= self.truncate_after <= 1.0:
            raise ValueError(
                f"guidance.truncate_after must be a fraction of the steps in [0, 1], got {self.truncate_after}"
            )
        if self.after not in GUIDANCE_AFTER:
            raise ValueError(f"guidance.after must be one of {list(GUIDANCE_AFTER)}, got {self.after!r}")

    def is_guided(self, step_index: int, num_steps: int) -> bool:
        """Whether step ``step_index`` (0 = the noisiest) of ``num_steps`` runs guidance."""
        return step_index < num_steps * self.truncate_after

    def network_evaluations(self, num_steps: int) -> int:
        """Network evaluations over B rows in a run of ``num_steps`` steps (a 2B batch counts 2).

        A guided step costs 2, unless the scale makes one of its predictions unnecessary (0 or 1).
        """
        per_guided = 1 if self.scale in (0.0, 1.0) else 2
        guided = sum(self.is_guided(i, num_steps) for i in range(num_steps))
        return guided * per_guided + (num_steps - guided)

    def predict(
        self,
        model: ConditionalDenoiser,
        x: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None,
        step_index: int,
        num_steps: int,
        context: torch.Tensor | None = None,
        uncond_context: torch.Tensor | None = None,
        null_label: int | None = None,
    ) -> torch.Tensor:
        """The (possibly guided) model output for step ``step_index`` of ``num_steps``.

        ``class_labels`` and ``context`` are the condition; the unconditional prediction drops
        the labels (None, or ``null_label`` where a batched pass needs a tensor) and uses
        ``uncond_context`` (None: no context). ``null_label`` is the network's ``num_classes``.
        """
        if class_labels is None and context is None:
            raise ValueError("classifier-free guidance needs a condition: pass class_labels or context")
        guided = self.is_guided(step_index, num_steps)
        if (guided and self.scale == 1.0) or (not guided and self.after == "cond"):
            return call_denoiser(model, x, t, class_labels, context)
        if (guided and self.scale == 0.0) or not guided:
            return call_denoiser(model, x, t, None, uncond_context)
        if self.batch_cond_uncond:
            cond, uncond = self._batched(model, x, t, class_labels, context, uncond_context, null_label)
        else:
            cond = call_denoiser(model, x, t, class_labels, context)
            uncond = call_denoiser(model, x, t, None, uncond_context)
        return uncond + self.scale * (cond - uncond)

    @staticmethod
    def _batched(
        model: ConditionalDenoiser,
        x: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None,
        context: torch.Tensor | None,
        uncond_context: torch.Tensor | None,
        null_label: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional and unconditional outputs from one forward pass over the doubled batch."""
        batch = x.shape[0]
        labels = None
        if class_labels is not None:
            if null_label is None:
                raise ValueError(
                    "guidance.batch_cond_uncond needs the null label (the network's num_classes) to batch "
                    "class labels; the network does not expose num_classes, so set batch_cond_uncond=false"
                )
            labels = torch.cat([class_labels, torch.full_like(class_labels, null_label)])
        both_context = None
        if context is None and uncond_context is not None:
            raise ValueError(
                "guidance.batch_cond_uncond cannot batch an uncond_context without a context; "
                "pass both or set batch_cond_uncond=false"
            )
        if context is not None:
            if uncond_context is None:
                raise ValueError(
                    "guidance.batch_cond_uncond with a context needs uncond_context (e.g. the empty prompt's "
                    "embeddings) to batch; pass it or set batch_cond_uncond=false"
                )
            both_context = torch.cat(
                [_expand_batch(context, batch, "context"), _expand_batch(uncond_context, batch, "uncond_context")]
            )
        out = call_denoiser(model, torch.cat([x, x]), torch.cat([t, t]), labels, both_context)
        return out[:batch], out[batch:]
