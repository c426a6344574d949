"""Checks that a teacher and a student can be compared at the same ``(x_t, t)``.

Distillation feeds the teacher the student's noisy input. That only means something when both
see the same latent shape, the same noise schedule (the same alpha_bar at every timestep) and the
same conditioning. The prediction type may differ: the teacher's output is converted (see
:meth:`Teacher.predict_as`). Everything else that differs is an error naming both sides.
"""

from __future__ import annotations

import torch
from torch import nn

from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.teachers.base import Teacher
from spectral_diffusion.utils.errors import UserError


class TeacherMismatchError(UserError, ValueError):
    """Teacher and student disagree on something distillation needs to be equal."""


def student_input_shape(net: nn.Module) -> tuple[int, int, int]:
    size = net.image_size
    return (net.in_channels, size, size)


def check_teacher_fits(teacher: Teacher, student: nn.Module, diffusion: GaussianDiffusion) -> None:
    """Raise :class:`TeacherMismatchError` unless ``teacher`` can teach ``student`` under ``diffusion``."""
    student_shape = student_input_shape(student)
    if tuple(teacher.input_shape) != student_shape:
        raise TeacherMismatchError(
            f"the teacher ({teacher.source}) denoises {teacher.input_shape} (C, H, W) but the student "
            f"(model.in_channels={student_shape[0]}, model.image_size={student_shape[1]}) takes {student_shape}. "
            "The student must live in the teacher's latent space: use a model preset with that shape, and the "
            "teacher's autoencoder (the default with teacher=diffusers) or the same autoencoder= as the teacher."
        )
    ours, theirs = diffusion.alphas_cumprod, teacher.diffusion.alphas_cumprod
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7):
        raise TeacherMismatchError(
            "the teacher and the student use different noise schedules, so the teacher cannot denoise the "
            f"student's x_t:\n  teacher ({teacher.source}): {teacher.diffusion.describe()}\n"
            f"  student (diffusion=...): {diffusion.describe()}\n"
            "Set the student's diffusion.schedule / num_timesteps / beta_start / beta_end to the teacher's "
            "(the prediction_type may differ: the teacher's output is converted)."
        )
    student_classes = getattr(student, "num_classes", None)
    if teacher.num_classes is not None and student_classes is None:
        raise TeacherMismatchError(
            f"the teacher ({teacher.source}) is class-conditional ({teacher.num_classes} classes) but the student "
            "is not: set model.num_classes, or use an unconditional teacher"
        )
    if teacher.num_classes is None and student_classes is not None:
        raise TeacherMismatchError(
            f"the student is class-conditional (model.num_classes={student_classes}) but the teacher "
            f"({teacher.source}) is not: the teacher cannot follow the labels; set model.num_classes=null"
        )
    if teacher.num_classes is not None and student_classes is not None and teacher.num_classes != student_classes:
        raise TeacherMismatchError(
            f"the teacher ({teacher.source}) has {teacher.num_classes} classes, the student "
            f"model.num_classes={student_classes}"
        )
