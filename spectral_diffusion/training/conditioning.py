"""Conditioning inputs of a training step: label checks, and condition dropout for guidance.

Classifier-free guidance (Ho & Salimans) needs one network that predicts both with and without
the condition. It is trained by hiding the condition of a random fraction ``p`` of the samples:

- class labels are replaced by the null label ``num_classes`` (the UNet's extra embedding row);
- a context sequence (e.g. text embeddings) loses all its tokens in ``context_mask``, and the
  network puts its learned null token there (``UNet.prepare_context``).

Which samples are hidden is drawn from the training step's generator, so a step is reproducible
from its seed and step numbers like its timesteps and noise. With ``p = 0`` nothing is drawn, so
runs without dropout see exactly the randomness they saw before conditioning existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spectral_diffusion.losses.denoising import context_kwargs


@dataclass
class Condition:
    """What a batch conditions the network on; any part may be ``None``.

    ``context_mask`` is ``(N, L)``, True at the tokens to attend to (Hugging Face's
    ``attention_mask`` convention).
    """

    class_labels: torch.Tensor | None = None
    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None

    def network_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for the network and the losses: only the context parts that are set.

        Class labels travel positionally (``net(x_t, t, class_labels)``), as they always have; the
        context is passed by keyword only when there is one, so networks and teachers that know
        nothing of context keep working.
        """
        return context_kwargs(self.context, self.context_mask)


def check_dropout(p: float, name: str) -> float:
    """``p`` as a float in [0, 1), or a ``ValueError`` naming the config key ``name``."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name}={p} must be a probability in [0, 1) (0 turns it off; 1 would never condition)")
    return p


def check_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The labels as int64, or a ``ValueError`` naming the first label outside ``[0, num_classes)``.

    Label ``num_classes`` is the network's null label: data must never contain it.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
    labels = labels.long()
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        value = int(labels[bad][0])
        raise ValueError(
            f"class label {value} is outside [0, {num_classes}) for model.num_classes={num_classes}; "
            "check the data's labels or set model.num_classes to the number of classes in the data"
        )
    return labels


def dropout_mask(batch: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Boolean ``(batch,)`` on the CPU: True where the condition is hidden, each with probability ``p``."""
    return torch.rand(batch, generator=generator) < p


def drop_labels(labels: torch.Tensor, num_classes: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """``labels`` with each replaced by the null label ``num_classes`` with probability ``p``."""
    if p <= 0:
        return labels
    drop = dropout_mask(labels.shape[0], p, generator).to(labels.device)
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def drop_context(
    context: torch.Tensor, context_mask: torch.Tensor | None, p: float, generator: torch.Generator | None
) -> torch.Tensor | None:
    """The context mask with every token of a sample cleared with probability ``p``.

    A row with no token left is the network's cue for its null context (see the module doc), so
    the context itself is left as it is; a distillation teacher gets the same mask and so the
    same unconditional samples.
    """
    if p <= 0:
        return context_mask
    n, length = context.shape[:2]
    keep = context_mask.bool() if context_mask is not None else torch.ones(n, length, dtype=torch.bool)
    drop = dropout_mask(n, p, generator).to(keep.device)
    return keep & ~drop[:, None]


def prepare_condition(
    labels: torch.Tensor | None,
    context: torch.Tensor | None,
    context_mask: torch.Tensor | None,
    num_classes: int | None,
    label_dropout: float = 0.0,
    context_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> Condition:
    """Check a batch's condition and, with dropout probabilities > 0, hide some of it.

    Labels are drawn first, then the context, each only when its probability is positive. The
    caller passes zero probabilities outside training (validation measures the conditional loss).
    """
    if labels is not None and num_classes is not None:
        labels = drop_labels(check_labels(labels, num_classes), num_classes, label_dropout, generator)
    if context is not None:
        if context_mask is not None and context_mask.shape != context.shape[:2]:
            raise ValueError(
                f"the batch's context_mask has shape {tuple(context_mask.shape)} but its context "
                f"{tuple(context.shape)}: expected (batch, tokens) = {tuple(context.shape[:2])}"
            )
        context_mask = drop_context(context, context_mask, context_dropout, generator)
    return Condition(labels, context, context_mask)
