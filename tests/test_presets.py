"""Model presets: the teacher replicas against diffusers and method.md, the students' ratios."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from diffusers import UNet2DModel

from spectral_diffusion.evaluation import attention_product_ops, count_gmacs, count_params, gmacs_by_op
from spectral_diffusion.evaluation.cost import ATTENTION_KEY, _macs_by_op
from spectral_diffusion.networks import UNet

from .conftest import CONFIG_DIR, compose_config


def preset(name: str, tmp_path: Path) -> UNet:
    return hydra.utils.instantiate(compose_config("evaluate", tmp_path, [f"model={name}"]).model)


def shape_of(net: UNet) -> tuple[int, int, int]:
    return (net.in_channels, net.image_size, net.image_size)


def diffusers_like(channels: tuple[int, ...], image_size: int, in_channels: int) -> UNet2DModel:
    """diffusers' UNet2DModel laid out as the CompVis LDM-4 UNet: attention in all but the first level."""
    n = len(channels)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=channels,
        layers_per_block=2,
        attention_head_dim=32,
        down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1),
        up_block_types=("AttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
    )


def test_small_ldm_layout_matches_diffusers_exactly():
    ours = UNet(32, 3, 32, (1, 2, 3), 2, (16, 8), head_channels=32, scale_shift_norm=False)
    theirs = diffusers_like((32, 64, 96), 32, 3)
    assert count_params(ours) == sum(p.numel() for p in theirs.parameters())
    # One counter for both: diffusers' linear layers are mm/addmm where ours are 1x1 convolutions,
    # so the totals are compared, and the attention products on their own.
    ours_by_op, theirs_by_op = gmacs_by_op(ours, (3, 32, 32)), gmacs_by_op(theirs, (3, 32, 32))
    assert sum(ours_by_op.values()) == pytest.approx(sum(theirs_by_op.values()), rel=1e-12)
    # QK^T and AV, L*L*C each: five layers at 16x16 (64 ch: 2 down, 3 up), six at 8x8 (96 ch: 2 down, mid, 3 up).
    analytic = (5 * 256 * 256 * 64 * 2 + 6 * 64 * 64 * 96 * 2) / 1e9
    assert ours_by_op[ATTENTION_KEY] == pytest.approx(analytic, rel=1e-12)
    assert theirs_by_op[ATTENTION_KEY] == pytest.approx(analytic, rel=1e-12)


def test_attention_products_do_not_depend_on_the_sdpa_kernel():
    """Channels-last inputs take another SDPA kernel, which some torch releases' FlopCounterMode misses."""
    net = UNet(32, 3, 32, (1, 2), 1, (16,), head_channels=32)
    contiguous = gmacs_by_op(net, (3, 32, 32))
    channels_last = gmacs_by_op(net.to(memory_format=torch.channels_last), (3, 32, 32))
    assert channels_last == pytest.approx(contiguous, rel=1e-12)
    # one layer down, one in the middle, two up (num_res_blocks + 1), all at 16x16 with 64 channels
    assert contiguous[ATTENTION_KEY] == pytest.approx(4 * 256 * 256 * 64 * 2 / 1e9, rel=1e-12)


def test_attention_products_of_a_bare_sdpa_call_with_unequal_lengths():
    class CrossAttention(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.zeros(2, 4, 10, 8), torch.zeros(2, 4, 7, 8), torch.zeros(2, 4, 7, 16)
    by_op = _macs_by_op(lambda: CrossAttention()(q, k, v))
    assert by_op == {ATTENTION_KEY: 2 * 4 * 10 * 7 * (8 + 16) / 1e9}


def test_hand_count_of_a_small_conv_stack():
    net = UNet(8, 1, 4, (1,), 1, (), mid_attention=False)
    hw, e = 8 * 8, 16  # positions; embedding width 4 * base
    conv3 = lambda cin, cout: cout * cin * 9 * hw  # noqa: E731
    res = lambda cin, cout: (
        conv3(cin, cout) + e * 2 * cout + conv3(cout, cout) + (0 if cin == cout else cout * cin * hw)
    )  # noqa: E731
    expected = (
        conv3(1, 4)  # conv_in
        + 4 * 16
        + 16 * 16  # timestep MLP
        + res(4, 4)  # down
        + 2 * res(4, 4)  # middle
        + 2 * res(8, 4)  # up, each on [h, skip]
        + conv3(4, 1)  # conv_out
    )
    assert count_gmacs(net, (1, 8, 8)) * 1e9 == pytest.approx(expected, rel=1e-12)


def test_ldm_celebahq_replica_matches_diffusers_and_method_md(tmp_path):
    net = preset("ldm_celebahq", tmp_path)
    theirs = diffusers_like((224, 448, 672, 896), 64, 3)
    assert count_params(net) == sum(p.numel() for p in theirs.parameters())
    assert count_params(net) / 1e6 == pytest.approx(274.06, rel=0.02)
    by_op = gmacs_by_op(net, (3, 64, 64))
    # method.md's 96.0 GMACs leave out attention's QK^T and AV products (5.18 GMACs here).
    assert sum(by_op.values()) - attention_product_ops(by_op) == pytest.approx(96.0, rel=0.02)
    assert sum(by_op.values()) == pytest.approx(101.2, rel=0.01)


def test_ldm_church_replica_size(tmp_path):
    net = preset("ldm_church", tmp_path)
    assert count_params(net) / 1e6 == pytest.approx(294.0, rel=0.02)
    assert net(torch.zeros(1, 4, 32, 32), torch.tensor([3])).shape == (1, 4, 32, 32)


@pytest.mark.parametrize(
    "student,teacher,low,high",
    [
        ("sd_celebahq_8x", "ldm_celebahq", 8, 9.5),
        ("sd_celebahq_18x", "ldm_celebahq", 18, 22),
        ("sd_church_8x", "ldm_church", 8, 9.5),
        ("sd_church_18x", "ldm_church", 18, 22),
    ],
)
def test_students_hit_the_papers_ratios(student, teacher, low, high, tmp_path):
    s, t = preset(student, tmp_path), preset(teacher, tmp_path)
    ratio = count_gmacs(t, shape_of(t)) / count_gmacs(s, shape_of(s))
    assert low <= ratio <= high
    assert shape_of(s) == shape_of(t)


@pytest.mark.parametrize("name", ["sd_celebahq_8x", "sd_church_18x", "fmnist_sd", "cifar10_sd"])
def test_sd_presets_use_wavelet_gating(name, tmp_path):
    net = preset(name, tmp_path)
    resamplers = [lvl.resample for lvl in list(net.down_levels) + list(net.up_levels) if lvl.resample is not None]
    assert resamplers and all("WaveletGated" in type(r).__name__ for r in resamplers)


def test_every_preset_has_a_docs_row():
    names = {p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")}
    table = (Path(CONFIG_DIR).parent / "docs" / "models.md").read_text()
    assert all(f"`{n}`" in table for n in names), "run python scripts/model_zoo.py"
