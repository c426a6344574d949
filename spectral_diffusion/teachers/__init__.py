"""Frozen teachers for distillation: a model bundle plus its decoder features and output conversion.

Teachers are loaded by ``spectral_diffusion/assembly/teachers.py`` (``teacher=checkpoint``,
``teacher=diffusers``) through the one loader of trained models.
"""

from spectral_diffusion.teachers.base import Teacher
from spectral_diffusion.teachers.compat import TeacherMismatchError, check_teacher_fits
from spectral_diffusion.teachers.features import FeatureRecorder, decoder_feature_points

__all__ = ["FeatureRecorder", "Teacher", "TeacherMismatchError", "check_teacher_fits", "decoder_feature_points"]
