"""Evaluation: compute cost now; FID and friends in their own modules."""

from spectral_diffusion.evaluation.cost import count_gmacs, count_params

__all__ = ["count_gmacs", "count_params"]
