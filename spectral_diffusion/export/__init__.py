"""Shipping trained models: a diffusers pipeline folder (``format=diffusers``) or ONNX graphs (``format=onnx``).

``scripts/export.py`` loads a checkpoint through ``assembly/load.py: load_run`` and calls
:func:`export_diffusers` or :func:`export_onnx`; both write into a staged folder (``output_folder.py``)
with a model card (``model_card.py``).
"""

from spectral_diffusion.export.diffusers_export import check_exportable, checked_quality, export_diffusers
from spectral_diffusion.export.onnx_export import PARITY_TOLERANCE, export_onnx
from spectral_diffusion.export.output_folder import ExportError

#: The formats scripts/export.py writes.
EXPORT_FORMATS = ("diffusers", "onnx")

__all__ = [
    "EXPORT_FORMATS",
    "PARITY_TOLERANCE",
    "ExportError",
    "check_exportable",
    "checked_quality",
    "export_diffusers",
    "export_onnx",
]
