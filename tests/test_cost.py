"""Parameter and MAC counts against hand-computed values."""

from __future__ import annotations

import torch
from torch import nn

from spectral_diffusion.evaluation import count_gmacs, count_params
from spectral_diffusion.networks import UNet


class ConvNet(nn.Module):
    """A network whose MACs are easy to count by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.linear = nn.Linear(16, 4)

    def forward(self, x, t, labels=None):
        return self.linear(self.conv(x))


def test_gmacs_of_conv_and_linear():
    # conv: 8 out x 3 in x 9 taps x 16x16 positions; linear applied to (1, 8, 16, 16): 8*16 rows x 16 x 4.
    expected = 8 * 3 * 9 * 16 * 16 + 8 * 16 * 16 * 4
    assert count_gmacs(ConvNet(), (3, 16, 16)) * 1e9 == expected


def test_params():
    assert count_params(ConvNet()) == (8 * 3 * 9 + 8) + (16 * 4 + 4)


def test_quickstart_model_cost_is_stable():
    """The quickstart preset's cost, as reported in docs/ and the README."""
    net = UNet(32, 1, 32, (1, 2, 2), 1, (8,))
    assert count_params(net) == 1_191_233
    assert abs(count_gmacs(net, (1, 32, 32)) - 0.2487) < 1e-3


def test_count_gmacs_restores_training_mode():
    net = ConvNet().train()
    count_gmacs(net, (3, 16, 16))
    assert net.training
    assert torch.is_grad_enabled()
