"""Speed switches that must be explicit (TF32), and an out-of-memory error that says what to change."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from spectral_diffusion.utils.errors import UserError


class TrainingOutOfMemoryError(UserError, RuntimeError):
    """Training ran out of (GPU or host) memory; the message suggests a smaller per-device batch."""


def configure_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in float32 matmuls and cuDNN convolutions on Ampere and later GPUs.

    PyTorch's defaults differ between the two (matmuls off, convolutions on), so a run states its
    choice instead of inheriting them. The legacy setters are used on purpose: Lightning reads
    ``torch.get_float32_matmul_precision()``, which refuses to answer once the newer
    ``fp32_precision`` attributes have been set. Without a GPU this changes nothing.
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"tf32={enabled!r} must be true or false")
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure on an accelerator or on the host."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "out of memory" in text.lower() or "DefaultCPUAllocator: can't allocate memory" in text
    )


@contextlib.contextmanager
def explain_out_of_memory(per_device_batch: int, accumulate: int) -> Iterator[None]:
    """Re-raise running out of memory as :class:`TrainingOutOfMemoryError` with the settings to lower."""
    try:
        yield
    except BaseException as err:
        if not is_out_of_memory(err):
            raise
        smaller = max(1, per_device_batch // 2)
        raise TrainingOutOfMemoryError(
            f"out of memory with a per-device batch of {per_device_batch} images "
            f"(x {accumulate} accumulated micro-batches). Lower the per-device batch: "
            f"batch.per_device_max={smaller} keeps the global batch (batch.global_size) and accumulates more, "
            f"or data.batch_size={smaller} without a global batch. trainer.precision=bf16-mixed also halves "
            f"activation memory. The original error: {type(err).__name__}: {err}"
        ) from err
