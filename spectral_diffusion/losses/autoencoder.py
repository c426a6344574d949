"""The autoencoder's training objective: L1 + spectrum L1 + KL to N(0, I), plus pluggable extra terms.

- **L1** in pixel space, mean over elements.
- **FFT term**: L1 on the 2-D spectrum, ``mean |FFT(recon) - FFT(target)|`` (modulus of the complex
  difference, ``norm="ortho"``, mean over frequencies). An L2 on an orthonormal FFT would equal the
  pixel MSE (Parseval) and add nothing; the L1 weighs every frequency's error alike, so the small
  high-frequency errors that pixel losses let through (blur) are not drowned by the large
  low-frequency ones. That is the bias Spectral Diffusion fights on the diffusion side.
- **KL** of the diagonal Gaussian posterior to N(0, I), summed over latent elements, averaged over
  the batch and divided by the number of image elements (C*H*W). LDM sums its reconstruction loss
  over pixels and its KL over latent elements; dividing the KL by the pixel count gives a mean
  reconstruction loss the same balance, so ``kl_weight`` has LDM's meaning (1e-6).

Extra terms (perceptual, adversarial, ...) plug in without touching this file. Each is an
:class:`ExtraTerm`, or a mapping ``{"name": str, "weight": float, "fn": callable}`` (so a Hydra
config can build one): ``fn(reconstruction, target) -> scalar tensor``, images in [-1, 1], lower is
better. The term is added as ``weight * fn(...)`` and logged under ``name``. Only the autoencoder's
parameters are optimised, so an extra term's own parameters must be frozen (e.g. an LPIPS network);
a GAN term needs a discriminator trained elsewhere, which this objective does not do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: The built-in parts; extra terms may not reuse these names.
BUILTIN_PARTS = ("l1", "fft", "kl")


@dataclass(frozen=True)
class ExtraTerm:
    """One pluggable loss term: ``weight * fn(reconstruction, target)``, logged as ``name``."""

    name: str
    weight: float
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_term(term: ExtraTerm | Mapping[str, Any], index: int) -> ExtraTerm:
    if isinstance(term, ExtraTerm):
        result = term
    elif isinstance(term, Mapping):
        missing = {"name", "weight", "fn"} - set(term)
        if missing:
            raise ValueError(f"loss.extra_terms[{index}] lacks {sorted(missing)}; give name, weight and fn")
        result = ExtraTerm(str(term["name"]), float(term["weight"]), term["fn"])
    else:
        raise TypeError(
            f"loss.extra_terms[{index}] is a {type(term).__name__}; expected an ExtraTerm or "
            "{name, weight, fn} with fn(reconstruction, target) -> scalar"
        )
    if not callable(result.fn):
        raise TypeError(f"loss.extra_terms[{index}] ({result.name}): fn is not callable")
    if result.name in BUILTIN_PARTS:
        raise ValueError(f"loss.extra_terms[{index}] is named {result.name!r}, a built-in part {BUILTIN_PARTS}")
    return result


def spectrum_l1(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean modulus of the difference of the orthonormal 2-D FFTs (float32)."""
    diff = torch.fft.fft2(reconstruction.float() - target.float(), norm="ortho")  # the FFT is linear
    return diff.abs().mean()


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over each sample's elements, shape ``(N,)``."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


class AutoencoderLoss:
    """``l1_weight * L1 + fft_weight * spectrum L1 + kl_weight * KL + sum(extra weights * terms)``.

    Calling it returns ``(total, parts)``: the scalar to minimise and a dict of the unweighted
    parts (``l1``, ``fft``, ``kl`` and each extra term's name), detached, for logging.
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        fft_weight: float = 0.1,
        kl_weight: float = 1e-6,
        extra_terms: Sequence[ExtraTerm | Mapping[str, Any]] | None = None,
    ) -> None:
        for name, value in (("l1_weight", l1_weight), ("fft_weight", fft_weight), ("kl_weight", kl_weight)):
            if value < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {value}")
        self.l1_weight, self.fft_weight, self.kl_weight = float(l1_weight), float(fft_weight), float(kl_weight)
        self.extra_terms = [_as_term(t, i) for i, t in enumerate(extra_terms or [])]
        names = [t.name for t in self.extra_terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss.extra_terms have repeated names: {names}")

    def __call__(
        self, reconstruction: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if reconstruction.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(reconstruction.shape)} vs target {tuple(target.shape)}")
        parts = {
            "l1": (reconstruction.float() - target.float()).abs().mean(),
            "fft": spectrum_l1(reconstruction, target),
            "kl": gaussian_kl(mean, logvar).mean() / target[0].numel(),
        }
        total = self.l1_weight * parts["l1"] + self.fft_weight * parts["fft"] + self.kl_weight * parts["kl"]
        for term in self.extra_terms:
            value = term.fn(reconstruction, target)
            if not torch.is_tensor(value) or value.numel() != 1:
                raise ValueError(f"loss extra term {term.name!r} must return a scalar tensor, got {value!r}")
            parts[term.name] = value.reshape(())
            total = total + term.weight * parts[term.name]
        return total, {k: v.detach() for k, v in parts.items()}
