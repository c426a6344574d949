"""Constrained sampling: inpainting and outpainting with a denoiser that was never trained for it.

The problem: a known image ``y`` and a mask ``m`` (1 = known, 0 = to generate), both in the space
the network denoises (pixels, or latents of a first stage). Each method runs the ordinary reverse
process of any sampler (``timesteps`` + ``step``, see ``samplers.py``) and steers it towards
samples whose known region matches ``y``:

- ``newton``: the back-propagation-free method of Graikos, Jojic & Samaras (2024), as the project's
  method notes (section 2) give it. At every step the error on the known region,
  ``e = m * (y - x0_hat(x_t))``, is pushed back into ``x_t`` along ``g = J e``, where ``J = d x0_hat / d x_t`` is the denoiser's
  Jacobian. ``J e`` is a Jacobian-vector product, so a finite difference of two forward passes
  gives it: no gradient ever flows through the network. ``K`` such corrections (``1 + 2K`` network
  calls per step) precede the sampler's own step.
- ``replace``: the replacement baseline (RePaint's conditioning without its resampling). Before every step the known region of ``x_t`` is overwritten with a fresh draw of
  ``q(x_t | y)``, and the final sample gets ``y`` itself. One network call per step.
- ``dps``: diffusion posterior sampling (Chung et al., 2023), the back-propagation baseline. After
  every step, ``x`` moves against the gradient, through the network, of ``||m * (y - x0_hat)||``.
  One forward and one backward pass per step.

:func:`constrained_sample` dispatches on the method's name; :func:`downsample_mask` takes a pixel
mask to a first stage's latent grid (``spectral_diffusion/inpainting/pipeline.py`` runs the whole
encode -> sample -> decode path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spectral_diffusion.diffusion.samplers import Denoiser, Generators, Sampler, randn

METHODS = ("newton", "replace", "dps")


class ConstraintError(ValueError):
    """The known image, the mask or the labels of a constrained-sampling problem do not fit."""


@dataclass(frozen=True)
class NewtonSettings:
    """Settings of the finite-difference Newton correction (defaults: method.md section 2).

    Args:
        iterations: corrections per sampling step (``K``); each costs two network calls.
        fd_step: the finite-difference step is ``h = fd_step / max|e|`` per sample, so the probe
            ``x_t + h e`` moves ``x_t`` by ``fd_step`` in the max norm whatever the error's size.
        step_start, step_end: the correction step ``lambda_k`` falls linearly from ``step_start``
            (first iteration) to ``step_end`` (last); ``g`` is normalised to a max-norm of 1, so
            ``lambda_k`` is how far (max norm) ``x_t`` moves.

    The steps are absolute, whatever the remaining error: they suit data of unit scale (pixels in
    [-1, 1], normalised latents). Near the end of sampling, where ``x0_hat`` moves with ``x_t``
    one to one, the error's maximum therefore swings by ``lambda_k`` per iteration rather than
    shrinking geometrically, and the final known-region error is of the order of ``step_end``
    at its worst pixel (measured on the Fashion-MNIST quickstart model: max 0.05, PSNR ~50 dB).
    """

    iterations: int = 5
    fd_step: float = 0.005
    step_start: float = 0.5
    step_end: float = 0.1

    def __post_init__(self) -> None:
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"newton.iterations must be an integer >= 0, got {self.iterations!r}")
        if not self.fd_step > 0:
            raise ValueError(f"newton.fd_step must be > 0, got {self.fd_step!r}")
        if not (self.step_start >= 0 and self.step_end >= 0):
            raise ValueError(
                f"newton.step_start and newton.step_end must be >= 0, got {self.step_start!r}, {self.step_end!r}"
            )

    def step_sizes(self) -> list[float]:
        """``lambda_k`` for ``k = 0 .. iterations - 1``, linear from ``step_start`` to ``step_end``."""
        k = int(self.iterations)
        if k == 1:
            return [float(self.step_start)]
        return [self.step_start + (self.step_end - self.step_start) * i / (k - 1) for i in range(k)]


# -- the problem ----------------------------------------------------------------------------------
def check_problem(known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate ``(known, mask)`` and return the mask as a float tensor that broadcasts against ``known``.

    ``known`` is ``(N, ...)`` (e.g. ``(N, C, H, W)``). ``mask`` has the same trailing (spatial) sizes;
    leading dimensions of size 1 or missing ones broadcast (``(H, W)``, ``(1, H, W)``,
    ``(N, 1, H, W)``, ...). Its values must be 0 (generate) or 1 (known).
    """
    if not isinstance(known, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise ConstraintError(
            f"known image and mask must be tensors, got {type(known).__name__} and {type(mask).__name__}"
        )
    if known.ndim < 2:
        raise ConstraintError(
            f"the known image must be batched, (N, ...) e.g. (N, C, H, W); got shape {tuple(known.shape)}"
        )
    if mask.ndim > known.ndim:
        raise ConstraintError(
            f"the mask has shape {tuple(mask.shape)}, more dimensions than the image {tuple(known.shape)}"
        )
    spatial = min(2, known.ndim - 1)
    shape = (1,) * (known.ndim - mask.ndim) + tuple(mask.shape)
    fits = tuple(shape[-spatial:]) == tuple(known.shape[-spatial:]) and all(
        m in (1, k) for m, k in zip(shape, known.shape, strict=True)
    )
    if not fits:
        raise ConstraintError(
            f"the mask's shape {tuple(mask.shape)} does not fit the image's {tuple(known.shape)}: it must have the "
            f"image's size {tuple(known.shape[-spatial:])} and broadcast over batch and channels, e.g. "
            f"{(1, 1, *known.shape[-spatial:])}"
        )
    values = torch.unique(mask.detach().float().cpu())
    if not bool(((values == 0) | (values == 1)).all()):
        bad = values[(values != 0) & (values != 1)][:5].tolist()
        raise ConstraintError(f"the mask must hold only 0 (generate) and 1 (known), found values such as {bad}")
    if not bool(torch.isfinite(known).all()):
        raise ConstraintError("the known image holds NaN or infinite values")
    return mask.reshape(shape).to(device=known.device, dtype=known.dtype)


def check_class_labels(model: object, class_labels: torch.Tensor | None, batch: int) -> None:
    """Labels must suit the network: none for an unconditional one, ``0 <= label < num_classes`` otherwise.

    The check is skipped for models that do not say (no ``num_classes`` attribute).
    """
    if not hasattr(model, "num_classes"):
        return
    num_classes = model.num_classes
    if class_labels is None:
        return
    if num_classes is None:
        raise ConstraintError("the model is unconditional (model.num_classes=null) but class labels were given")
    if class_labels.ndim != 1 or len(class_labels) != batch:
        raise ConstraintError(f"class labels must have shape ({batch},), got {tuple(class_labels.shape)}")
    bad = class_labels[(class_labels < 0) | (class_labels >= num_classes)]
    if len(bad):
        raise ConstraintError(
            f"class label {int(bad[0])} is out of range: this model has {num_classes} classes, labels 0..{num_classes - 1}"
        )


def downsample_mask(mask: torch.Tensor, factor: int, threshold: float = 1.0) -> torch.Tensor:
    """A pixel mask ``(N, 1, H, W)`` (1 = known) on a first stage's latent grid ``(N, 1, H/f, W/f)``.

    Each latent position covers an ``f x f`` block of pixels. The block's known fraction (average
    pooling) is compared with ``threshold``: with the default 1.0 a latent is known only if all its
    pixels are, so the sampler never pins a latent that also encodes pixels it should generate;
    0.5 is a majority vote, and a small value (e.g. 1e-6) marks a latent known if any pixel is.
    """
    if factor == 1:
        return mask
    if mask.shape[-1] % factor or mask.shape[-2] % factor:
        raise ConstraintError(
            f"the mask's size {tuple(mask.shape[-2:])} is not divisible by the first stage's factor {factor}"
        )
    if not 0 < threshold <= 1:
        raise ConstraintError(f"latent_mask_threshold must be in (0, 1], got {threshold}")
    fraction = F.avg_pool2d(mask.float(), factor)
    return (fraction >= threshold - 1e-6).to(mask.dtype)


# -- shared helpers ---------------------------------------------------------------------------------
def _per_sample_max(x: torch.Tensor) -> torch.Tensor:
    """``max |x|`` over all but the batch dimension, shaped to broadcast against ``x``."""
    return x.abs().flatten(1).amax(1).reshape(-1, *([1] * (x.ndim - 1)))


def _timestep_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)


def _x0(sampler: Sampler, output: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
    """The denoiser's x0 estimate, unclipped: clipping would flatten the finite differences."""
    return sampler.diffusion.predict_x0_eps(output, x, torch.full((x.shape[0],), int(t)))[0]


def _start(sampler: Sampler, known: torch.Tensor, generator: Generators, noise: torch.Tensor | None) -> torch.Tensor:
    sampler.reset()  # a multistep solver must not carry history over from another run
    if noise is not None:
        if tuple(noise.shape) != tuple(known.shape):
            raise ConstraintError(f"noise has shape {tuple(noise.shape)}, the known image {tuple(known.shape)}")
        return noise.to(device=known.device, dtype=known.dtype)
    return randn(known.shape, generator, known.device, known.dtype)


# -- the methods ----------------------------------------------------------------------------------
@torch.no_grad()
def newton_correct(
    model: Denoiser,
    sampler: Sampler,
    x: torch.Tensor,
    t: int,
    known: torch.Tensor,
    mask: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    settings: NewtonSettings = NewtonSettings(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """``K`` finite-difference Newton corrections of ``x_t``; returns ``(x_t, model output at x_t)``.

    ``g = (x0_hat(x_t + h e) - x0_hat(x_t)) / h`` approximates ``J e``; it is normalised per sample
    to a max-norm of 1 and ``x_t`` moves by ``lambda_k g``. A sample whose error is already 0 does
    not move (its ``h`` would be infinite).
    """
    tb = _timestep_batch(t, x)
    output = model(x, tb, class_labels)
    x0 = _x0(sampler, output, x, t)
    for step_size in settings.step_sizes():
        error = mask * (known - x0)
        error_max = _per_sample_max(error)
        active = (error_max > 0).to(x.dtype)
        h = settings.fd_step / error_max.clamp_min(torch.finfo(x.dtype).tiny)
        probe = x + h * error
        g = (_x0(sampler, model(probe, tb, class_labels), probe, t) - x0) / h
        g = active * g / _per_sample_max(g).clamp_min(torch.finfo(x.dtype).tiny)
        x = x + step_size * g
        output = model(x, tb, class_labels)
        x0 = _x0(sampler, output, x, t)
    return x, output


@torch.no_grad()
def sample_newton(
    model: Denoiser,
    sampler: Sampler,
    known: torch.Tensor,
    mask: torch.Tensor,
    generator: Generators = None,
    class_labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    settings: NewtonSettings = NewtonSettings(),
) -> torch.Tensor:
    """Constrained sampling with finite-difference Newton corrections before every sampler step."""
    mask = check_problem(known, mask)
    check_class_labels(model, class_labels, known.shape[0])
    x = _start(sampler, known, generator, noise)
    for t in sampler.timesteps.tolist():
        x, output = newton_correct(model, sampler, x, t, known, mask, class_labels, settings)
        x = sampler.step(output, t, x, generator)
    return x


@torch.no_grad()
def sample_replace(
    model: Denoiser,
    sampler: Sampler,
    known: torch.Tensor,
    mask: torch.Tensor,
    generator: Generators = None,
    class_labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Constrained sampling by pasting ``q(x_t | y)`` into the known region before every step."""
    mask = check_problem(known, mask)
    check_class_labels(model, class_labels, known.shape[0])
    x = _start(sampler, known, generator, noise)
    diffusion = sampler.diffusion
    for t in sampler.timesteps.tolist():
        tb = _timestep_batch(t, x)
        noised = diffusion.add_noise(known, randn(known.shape, generator, x.device, x.dtype), tb)
        x = mask * noised + (1 - mask) * x
        x = sampler.step(model(x, tb, class_labels), t, x, generator)
    return mask * known + (1 - mask) * x


def sample_dps(
    model: Denoiser,
    sampler: Sampler,
    known: torch.Tensor,
    mask: torch.Tensor,
    generator: Generators = None,
    class_labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Diffusion posterior sampling: every step is followed by ``x -= scale * grad ||m (y - x0_hat(x_t))||``.

    The gradient goes through the network (one backward pass per step); each sample's norm is its
    own, so the samples of a batch do not interact. ``scale`` is DPS's ``zeta'``.
    """
    mask = check_problem(known, mask)
    check_class_labels(model, class_labels, known.shape[0])
    x = _start(sampler, known, generator, noise)
    for t in sampler.timesteps.tolist():
        tb = _timestep_batch(t, x)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            output = model(x_in, tb, class_labels)
            residual = (mask * (known - _x0(sampler, output, x_in, t))).flatten(1)
            norm = residual.norm(dim=1).sum()
            (grad,) = torch.autograd.grad(norm, x_in)
        with torch.no_grad():
            x = sampler.step(output.detach(), t, x, generator) - scale * grad
    return x.detach()


def constrained_sample(
    method: str,
    model: Denoiser,
    sampler: Sampler,
    known: torch.Tensor,
    mask: torch.Tensor,
    generator: Generators = None,
    class_labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    newton: NewtonSettings | None = None,
    dps_scale: float = 1.0,
) -> torch.Tensor:
    """Run constrained sampling with ``method`` (``newton``, ``replace`` or ``dps``); returns x0 samples.

    ``known`` and ``mask`` are in the space the network denoises (see :func:`check_problem`);
    the result has ``known``'s shape.
    """
    if method == "newton":
        return sample_newton(model, sampler, known, mask, generator, class_labels, noise, newton or NewtonSettings())
    if method == "replace":
        return sample_replace(model, sampler, known, mask, generator, class_labels, noise)
    if method == "dps":
        return sample_dps(model, sampler, known, mask, generator, class_labels, noise, dps_scale)
    raise ConstraintError(f"unknown constrained-sampling method {method!r}; choose one of {list(METHODS)}")


def network_calls_per_step(method: str, newton: NewtonSettings | None = None) -> int:
    """Forward passes per sampler step (``dps`` adds one backward pass per step on top)."""
    if method == "newton":
        return 1 + 2 * int((newton or NewtonSettings()).iterations)
    if method in ("replace", "dps"):
        return 1
    raise ConstraintError(f"unknown constrained-sampling method {method!r}; choose one of {list(METHODS)}")
