"""Evaluation: compute cost now; FID and friends in their own modules."""

from spectral_diffusion.evaluation.cost import attention_product_ops, count_gmacs, count_params, gmacs_by_op

__all__ = ["attention_product_ops", "count_gmacs", "count_params", "gmacs_by_op"]
