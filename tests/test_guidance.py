"""Classifier-free guidance and its truncation: the combination, the call counts, the cut-off, errors."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from spectral_diffusion.diffusion import (
    ClassifierFreeGuidance,
    DDIMSampler,
    DPMSolverPlusPlusSampler,
    GaussianDiffusion,
    sample,
)
from spectral_diffusion.networks.unet import UNet

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "guidance" / "default.yaml"
NUM_CLASSES = 3
SHAPE = (4, 1, 8, 8)
LABELS = torch.tensor([0, 1, 2, 1])


class Counting(torch.nn.Module):
    """Wraps a network and counts its forward passes and the rows they covered."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_classes = getattr(net, "num_classes", None)
        self.calls = 0
        self.rows = 0

    def forward(self, x, t, class_labels=None, **kwargs):
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x, t, class_labels, **kwargs)


@pytest.fixture(scope="module")
def unet() -> UNet:
    """A tiny class-conditional UNet with every weight random (no zero-initialised output)."""
    torch.manual_seed(0)
    net = UNet(8, 1, 8, (1, 2), 1, head_channels=8, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.3)
    return net


def run(model, guidance=None, sampler=None, labels=LABELS, **kwargs) -> torch.Tensor:
    sampler = sampler or DDIMSampler(GaussianDiffusion("linear"), eta=0.0, steps=6)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return sample(model, sampler, SHAPE, noise=noise, class_labels=labels, guidance=guidance, **kwargs)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("make_sampler", [DDIMSampler, DPMSolverPlusPlusSampler], ids=["ddim", "dpmpp"])
def test_scale_one_is_the_conditional_sample(unet, batched, make_sampler):
    sampler = make_sampler(GaussianDiffusion("linear"), steps=6)
    guided = run(unet, ClassifierFreeGuidance(scale=1.0, batch_cond_uncond=batched), sampler)
    torch.testing.assert_close(guided, run(unet, None, sampler), rtol=0, atol=0)


def test_guidance_combines_raw_outputs_linearly():
    """uncond + w (cond - uncond), on a model whose two predictions are known constants."""

    def model(x, t, class_labels=None):
        value = 2.0 if class_labels is None else 5.0
        return torch.full_like(x, value)

    x, t = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    out = ClassifierFreeGuidance(scale=3.0).predict(model, x, t, torch.tensor([0, 1]), 0, 10)
    torch.testing.assert_close(out, torch.full_like(x, 2.0 + 3.0 * (5.0 - 2.0)))


@pytest.mark.parametrize(
    "truncate_after,expected",
    [(0.0, 6), (1.0, 12), (0.5, 9), (0.25, 8)],  # N + guided steps: 0, 6, 3 and ceil(1.5) = 2 of N = 6
)
def test_network_calls_follow_the_truncation(unet, truncate_after, expected):
    counting = Counting(unet)
    guidance = ClassifierFreeGuidance(scale=3.0, truncate_after=truncate_after)
    run(counting, guidance)
    assert counting.calls == expected == guidance.network_evaluations(6)
    assert counting.rows == expected * SHAPE[0]


def test_batched_guidance_makes_one_pass_over_twice_the_rows_and_agrees(unet):
    counting = Counting(unet)
    batched = run(counting, ClassifierFreeGuidance(scale=3.0, batch_cond_uncond=True))
    assert counting.calls == 6 and counting.rows == 2 * 6 * SHAPE[0]  # 12 evaluations over B rows
    separate = run(unet, ClassifierFreeGuidance(scale=3.0))
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-5)


def test_guided_differs_from_unguided_and_the_cut_off_chooses_the_prediction(unet):
    conditional, unconditional = run(unet), run(unet, labels=None)
    guided = run(unet, ClassifierFreeGuidance(scale=4.0))
    assert (guided - conditional).abs().max() > 1e-2
    # Cut off at once: every step is the single prediction that `after` names.
    after_cond = run(unet, ClassifierFreeGuidance(scale=4.0, truncate_after=0.0, after="cond"))
    after_uncond = run(unet, ClassifierFreeGuidance(scale=4.0, truncate_after=0.0, after="uncond"))
    torch.testing.assert_close(after_cond, conditional, rtol=0, atol=0)
    torch.testing.assert_close(after_uncond, unconditional, rtol=0, atol=0)
    # Half-way truncation lies between full guidance and none.
    half = run(unet, ClassifierFreeGuidance(scale=4.0, truncate_after=0.5))
    assert 0 < (half - guided).abs().max() and 0 < (half - unconditional).abs().max()


def test_null_label_is_the_unconditional_prediction(unet):
    """The label value num_classes is 'no class': the same as passing no labels."""
    nulls = torch.full((SHAPE[0],), NUM_CLASSES)
    torch.testing.assert_close(run(unet, labels=nulls), run(unet, labels=None), rtol=0, atol=0)


def test_context_is_forwarded_only_when_given():
    seen: list[tuple] = []

    def model(x, t, class_labels=None, **kwargs):
        seen.append((None if class_labels is None else class_labels.tolist(), kwargs.get("context")))
        return torch.zeros_like(x)

    x, t = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    text, empty = torch.ones(2, 5, 4), torch.zeros(1, 5, 4)
    ClassifierFreeGuidance(scale=2.0).predict(model, x, t, None, 0, 4, context=text, uncond_context=empty)
    assert seen[0][1] is text and seen[1][1] is empty
    seen.clear()
    ClassifierFreeGuidance(scale=2.0, batch_cond_uncond=True).predict(
        model, x, t, None, 0, 4, context=text, uncond_context=empty
    )
    ((labels, both),) = seen
    assert labels is None and both.shape == (4, 5, 4)
    torch.testing.assert_close(both, torch.cat([text, empty.expand(2, 5, 4)]))
    seen.clear()
    ClassifierFreeGuidance(scale=2.0).predict(model, x, t, torch.tensor([0, 1]), 0, 4)
    assert seen == [([0, 1], None), (None, None)]  # no context key at all for networks without one


@pytest.mark.parametrize(
    "options,message",
    [
        ({"scale": -1.0}, r"guidance.scale must be >= 0"),
        ({"scale": float("nan")}, r"guidance.scale must be >= 0"),
        ({"truncate_after": 1.5}, r"guidance.truncate_after must be a fraction of the steps in \[0, 1\], got 1.5"),
        ({"truncate_after": -0.1}, r"guidance.truncate_after"),
        ({"after": "none"}, r"guidance.after must be one of \['uncond', 'cond'\], got 'none'"),
    ],
)
def test_bad_guidance_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        ClassifierFreeGuidance(**options)


@pytest.mark.parametrize(
    "labels,message",
    [
        (torch.tensor([0, 1, 2, 4]), r"class label 4 is out of range: the network has num_classes=3"),
        (torch.tensor([0, -1, 2, 1]), r"class label -1 is out of range"),
        (torch.tensor([0.0, 1.0, 2.0, 1.0]), r"class_labels must be an integer tensor"),
        (torch.tensor([0, 1]), r"class_labels must have shape \(4,\)"),
    ],
)
def test_bad_class_labels_are_named(unet, labels, message):
    with pytest.raises(ValueError, match=message):
        run(unet, ClassifierFreeGuidance(scale=2.0), labels=labels)


def test_guidance_without_a_condition_or_null_label_is_refused(unet):
    with pytest.raises(ValueError, match="needs a condition: pass class_labels or context"):
        run(unet, ClassifierFreeGuidance(scale=2.0), labels=None)

    def anonymous(x, t, class_labels=None):  # no num_classes attribute to take the null label from
        return unet(x, t, class_labels)

    with pytest.raises(ValueError, match="batch_cond_uncond needs the null label"):
        run(anonymous, ClassifierFreeGuidance(scale=2.0, batch_cond_uncond=True))


def test_default_config_instantiates_as_plain_conditional_sampling():
    guidance = hydra.utils.instantiate(OmegaConf.load(CONFIG))
    assert guidance == ClassifierFreeGuidance(scale=1.0, truncate_after=1.0, after="uncond")
    assert guidance.network_evaluations(50) == 50


def test_a_plain_number_is_a_guidance_scale(unet):
    torch.testing.assert_close(run(unet, 3.0), run(unet, ClassifierFreeGuidance(scale=3.0)), rtol=0, atol=0)
