"""Running exported models without PyTorch: the numpy + onnxruntime DDIM sampler (``onnx_sampler.py``).

Nothing here imports torch or another package of this framework, so the module runs on its own
(``scripts/export.py format=onnx`` copies it into the export folder).
"""
