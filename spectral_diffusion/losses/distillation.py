"""Spectrum-aware distillation (Spectral Diffusion, method.md section 1):

    L = L_DDPM + lambda_s * L_spatial + lambda_f * L_freq

- ``L_spatial = sum_i mean |F_T^(i) - A_i(F_S^(i))|^2`` over the scales ``i``: the network output
  (i = 0) and, with ``features=True``, the decoder's per-level features at every resolution that
  teacher and student share. ``A_i`` is a learned 1x1 convolution from the student's channels to the
  teacher's (identity-initialised when they are equal; none for the output).
- ``L_freq = sum_i mean( w_i * |FFT(F_T^(i)) - FFT(A_i(F_S^(i)))|^2 )`` with the 2-D FFT of each
  channel (orthonormal, so that with ``w = 1`` it equals ``L_spatial`` by Parseval), and
  ``w_i = |FFT(x0^(i))|^alpha``: ``x0^(i)`` is the clean (latent) image area-resized to scale ``i``,
  its FFT magnitude averaged over channels, clamped away from 0 at ``magnitude_floor`` times its
  mean, raised to ``alpha`` (-1: the small-magnitude, high-frequency coefficients weigh most) and
  normalised to mean 1 per image, so ``lambda_f`` keeps its meaning whatever ``alpha``.

Each "mean" is over batch, channels and positions. With ``normalize_features=True`` (the default)
each intermediate feature pair is first divided, per sample, by the root mean square of the
teacher's feature (detached), so the loss of a feature is its relative error. Raw decoder features
are not of one scale: in the Fashion-MNIST teacher their mean square grows from 1-3 at t = 50 to
20-100 at t = 950, and is 2-5x larger at 32x32 than at 8x8. Unnormalised, the feature terms
(1.5 in a 4x student after 800 steps) buried the output term (0.02), and the student's own L_DDPM
got worse (val 0.213 against 0.186 without distillation; normalised: 0.181). The output needs no
such scaling: its target, an eps/v/x0 prediction, has unit scale by construction. Both terms see
the same normalised pairs, so the Parseval identity above still holds.

The teacher sees exactly the student's ``(x_t, t, labels)`` and runs without gradients; its output
is converted to the student's prediction type if they differ.

The paper's ablation, one switch each (configs/loss/):
    none            loss=denoising
    output only     loss=distill_output      (features=false, lambda_freq=0)
    + features      loss=distill_features    (features=true,  lambda_freq=0)
    + freq. weights loss=spectral_distill    (features=true,  lambda_freq=0.1, alpha=-1)
"""

from __future__ import annotations

import contextlib
import inspect
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.losses.denoising import DenoisingLoss, context_kwargs
from spectral_diffusion.teachers.base import Teacher
from spectral_diffusion.teachers.features import FeatureRecorder, decoder_feature_points
from spectral_diffusion.utils.shared import SharedRef


def spectral_weights(x0: torch.Tensor, alpha: float, magnitude_floor: float = 1e-3) -> torch.Tensor:
    """``|FFT(x0)|^alpha`` per frequency, averaged over channels, normalised to mean 1 per image.

    Returns ``(N, 1, H, W)`` float32 weights for the (unshifted) ``torch.fft.fft2`` layout.
    """
    magnitude = torch.fft.fft2(x0.float(), norm="ortho").abs().mean(dim=1, keepdim=True)
    floor = magnitude.mean(dim=(2, 3), keepdim=True) * magnitude_floor
    weights = torch.maximum(magnitude, floor.clamp_min(torch.finfo(torch.float32).tiny)).pow(alpha)
    return weights / weights.mean(dim=(2, 3), keepdim=True)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` at spatial ``size``: area averaging down (no aliasing of x0's spectrum), bilinear up."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = "area" if size[0] <= x.shape[-2] else "bilinear"
    return F.interpolate(x, size=size, mode=mode)


def frequency_distance(teacher: torch.Tensor, student: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``mean(w * |FFT(teacher) - FFT(student)|^2)`` over batch, channels and frequencies."""
    diff = torch.fft.fft2(teacher.float() - student.float(), norm="ortho")  # FFT is linear
    power = diff.real.square() + diff.imag.square()
    return (power if weights is None else power * weights).mean()


class SpectralDistillationLoss(nn.Module):
    """``L_DDPM + lambda_spatial * L_spatial + lambda_freq * L_freq`` against a frozen teacher.

    Args:
        diffusion: the student's diffusion process.
        teacher: the frozen teacher (``teachers/``); set by ``training/setup.py`` from ``teacher=``.
        student: the student network; only read here, to find its feature maps and size the adapters.
        lambda_spatial, lambda_freq: weights of the two distillation terms (0 turns one off).
        alpha: exponent of the spectrum weights (-1 in the paper; 0 gives uniform weights).
        features: distil the decoder features too, not only the output.
        magnitude_floor: FFT magnitudes are clamped below at this fraction of their mean.
        snr_gamma: Min-SNR-gamma weighting of the L_DDPM term (as in :class:`DenoisingLoss`).
        normalize_features: divide each feature pair by the teacher feature's RMS per sample, so that
            every scale and timestep contributes its relative error (module docstring).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        teacher: Teacher,
        student: nn.Module,
        lambda_spatial: float = 0.1,
        lambda_freq: float = 0.1,
        alpha: float = -1.0,
        features: bool = True,
        magnitude_floor: float = 1e-3,
        snr_gamma: float | None = None,
        normalize_features: bool = True,
    ) -> None:
        super().__init__()
        self.normalize_features = normalize_features
        self.denoising = DenoisingLoss(diffusion, snr_gamma)
        self.diffusion = diffusion
        # Not a submodule: the teacher stays out of the student's state_dict, optimizer and EMA copy.
        self._teacher = SharedRef(teacher)
        self.lambda_spatial = lambda_spatial
        self.lambda_freq = lambda_freq
        self.alpha = alpha
        self.features = features
        self.magnitude_floor = magnitude_floor
        self.adapters = nn.ModuleList()
        self.student_points: list[int] = []
        self.teacher_points: list[int] = []
        if features:
            self._pair_features(student, teacher)
        self._student_recorder: FeatureRecorder | None = None
        self._teacher_recorder: FeatureRecorder | None = None
        # A weak reference: assigning the module itself would register the student as a submodule.
        self._recorded_student: weakref.ref | None = None

    # -- pairing student and teacher features by resolution ---------------------------------------
    @torch.no_grad()
    def _pair_features(self, student: nn.Module, teacher: Teacher) -> None:
        """Find decoder features of equal resolution and build a 1x1 adapter for each pair.

        Shapes are discovered with one forward pass of a single zero input through both networks.
        """
        device = next(teacher.parameters()).device
        x = torch.zeros(1, *teacher.input_shape, device=device)
        t = torch.zeros(1, dtype=torch.long, device=device)
        labels = torch.zeros(1, dtype=torch.long, device=device) if teacher.num_classes is not None else None
        s_rec, t_rec = FeatureRecorder(decoder_feature_points(student)), FeatureRecorder(teacher.feature_points())
        was_training = student.training
        student.eval()
        try:
            with s_rec.recording() as s_feats:
                student(x.to(next(student.parameters()).device), t, labels)
            with t_rec.recording() as t_feats:
                teacher(x, t, labels)
        finally:
            student.train(was_training)
            s_rec.remove()
            t_rec.remove()
        t_by_size = {tuple(f.shape[-2:]): i for i, f in enumerate(t_feats)}
        for i, feature in enumerate(s_feats):
            j = t_by_size.get(tuple(feature.shape[-2:]))
            if j is None:
                continue
            c_s, c_t = feature.shape[1], t_feats[j].shape[1]
            adapter = nn.Conv2d(c_s, c_t, kernel_size=1)
            if c_s == c_t:  # start as the identity: equal networks then start at zero distillation loss
                nn.init.dirac_(adapter.weight)
                nn.init.zeros_(adapter.bias)
            self.adapters.append(adapter)
            self.student_points.append(i)
            self.teacher_points.append(j)
        if not self.adapters:
            raise ValueError(
                "loss.features=true but the student's and the teacher's decoders share no feature resolution "
                f"(student {[tuple(f.shape[-2:]) for f in s_feats]}, teacher {[tuple(f.shape[-2:]) for f in t_feats]}); "
                "use loss.features=false"
            )

    @property
    def teacher(self) -> Teacher:
        return self._teacher.obj

    def _check_teacher_takes_context(self) -> None:
        # The teacher must see the student's (dropped) context; one that cannot must not be skipped silently.
        if "context" not in inspect.signature(self.teacher.predict_as).parameters:
            raise ValueError(
                f"the batches carry a context (text embeddings) but the teacher {self.teacher.source or '?'} "
                "takes none: distil a context network from a teacher conditioned on the same context, "
                "or train it with loss=denoising"
            )

    def _recorders(self, student: nn.Module) -> tuple[FeatureRecorder, FeatureRecorder]:
        # Hooks are registered once, on the first call, on the network the loss is called with.
        if self._recorded_student is None or self._recorded_student() is not student:
            if self._student_recorder is not None:
                self._student_recorder.remove()
                self._teacher_recorder.remove()
            points = decoder_feature_points(student)
            self._student_recorder = FeatureRecorder([points[i] for i in self.student_points])
            t_points = self.teacher.feature_points()
            self._teacher_recorder = FeatureRecorder([t_points[j] for j in self.teacher_points])
            self._recorded_student = weakref.ref(student)
        return self._student_recorder, self._teacher_recorder

    def __getstate__(self) -> dict:
        # Hook handles and the recorded network are runtime state; deepcopies (EMA) rebuild them.
        state = self.__dict__.copy()
        state.update(_student_recorder=None, _teacher_recorder=None, _recorded_student=None)
        return state

    # -- the loss ---------------------------------------------------------------------------------
    def terms(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """All terms of the loss: ``loss`` (the total), ``ddpm``, ``spatial`` and ``freq``.

        ``context`` and ``context_mask`` go to student and teacher alike.
        """
        cond = context_kwargs(context, context_mask)
        if cond:
            self._check_teacher_takes_context()
        x_t, t, noise = self.denoising.noised_batch(x0, generator)
        s_rec, t_rec = self._recorders(net) if self.features else (None, None)
        with s_rec.recording() if s_rec else contextlib.nullcontext([]) as s_feats:
            prediction = net(x_t, t, class_labels, **cond)
        ddpm = self.denoising.per_sample(prediction, x0, noise, t).mean()
        with torch.no_grad(), t_rec.recording() if t_rec else contextlib.nullcontext([]) as t_feats:
            target = self.teacher.predict_as(self.diffusion.prediction_type, x_t, t, class_labels, **cond)

        pairs = [(target, prediction)]
        for k, adapter in enumerate(self.adapters):
            teacher_feature, student_feature = t_feats[k].float(), adapter(s_feats[k]).float()
            if self.normalize_features:
                rms = teacher_feature.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
                teacher_feature, student_feature = teacher_feature / rms, student_feature / rms
            pairs.append((teacher_feature, student_feature))
        spatial = sum(F.mse_loss(s.float(), tf.float()) for tf, s in pairs)
        freq = torch.zeros((), device=x0.device)
        if self.lambda_freq:
            for tf, s in pairs:
                w = spectral_weights(resize_to(x0, tf.shape[-2:]), self.alpha, self.magnitude_floor)
                freq = freq + frequency_distance(tf, s, w)
        total = ddpm + self.lambda_spatial * spatial + self.lambda_freq * freq
        return {"loss": total, "ddpm": ddpm.detach(), "spatial": spatial.detach(), "freq": freq.detach()}

    def forward(
        self,
        net: nn.Module,
        x0: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.terms(net, x0, class_labels, generator, context, context_mask)["loss"]
