"""Frozen teachers for distillation: this framework's checkpoints or diffusers models."""

from spectral_diffusion.teachers.base import Teacher
from spectral_diffusion.teachers.compat import TeacherMismatchError, check_teacher_fits
from spectral_diffusion.teachers.diffusers_teacher import TeacherLoadError, load_diffusers_teacher
from spectral_diffusion.teachers.features import FeatureRecorder, decoder_feature_points
from spectral_diffusion.teachers.framework import load_checkpoint_teacher

__all__ = [
    "FeatureRecorder",
    "Teacher",
    "TeacherLoadError",
    "TeacherMismatchError",
    "check_teacher_fits",
    "decoder_feature_points",
    "load_checkpoint_teacher",
    "load_diffusers_teacher",
]
