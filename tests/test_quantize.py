"""uint8 quantisation of images in [-1, 1]: rounding (default) and LDM/ADM's truncation, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectral_diffusion.utils.images import to_uint8


def test_round_and_truncate_by_hand():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 1.7, -3.0]).reshape(1, 1, 1, 8)
    # (x + 1) * 127.5 = 0, 0.1275, 127.5, 191.25, 254.87, 255, (clamped) 255, 0
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 191, 255, 255, 255, 0]
    assert to_uint8(x, "truncate").flatten().tolist() == [0, 0, 127, 191, 254, 255, 255, 0]


def test_truncation_equals_the_ldm_sampling_script_expression():
    """CompVis' scripts/sample_diffusion.py: ``((x + 1) * 127.5).clamp(0, 255).to(uint8)`` in numpy terms."""
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    reference = np.clip((x.numpy() + 1.0) * 127.5, 0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(x, "truncate").numpy(), reference)


def test_images_from_uint8_round_trip_exactly_by_rounding():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(levels.float() / 127.5 - 1), levels)


def test_unknown_quantization_is_named():
    with pytest.raises(ValueError, match="unknown quantize='floor'"):
        to_uint8(torch.zeros(1, 1, 2, 2), "floor")
