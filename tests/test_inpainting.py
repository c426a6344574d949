"""Constrained sampling (inpainting/outpainting): the samplers, the latent path, masks, bad input, the CLI.

Most tests use the exact denoiser of Gaussian data (as ``test_analytic_sampler.py`` does), where
the posterior of the unknown pixels given the known ones is known in closed form, so the effect of
the constraint can be checked against it; the rest use a tiny random UNet.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spectral_diffusion.autoencoders import FirstStage, KLAutoencoder, KLFirstStage
from spectral_diffusion.diffusion import DDIMSampler, DPMSolverPlusPlusSampler, GaussianDiffusion
from spectral_diffusion.diffusion.constrained import (
    ConstraintError,
    NewtonSettings,
    check_class_labels,
    check_problem,
    constrained_sample,
    downsample_mask,
    network_calls_per_step,
)
from spectral_diffusion.inpainting import (
    fit_hole,
    inpaint,
    known_mask,
    load_image,
    masked_psnr,
    named_hole,
    read_hole_image,
)
from spectral_diffusion.networks import UNet
from spectral_diffusion.utils.checkpoint import METADATA_KEY

from .conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
DIFFUSION = GaussianDiffusion("linear", 1000, 1e-4, 0.02)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is fastest and keeps the shared CPU free."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- a Gaussian "image" model with an exact denoiser ----------------------------------------------
H, W = 2, 4
D = H * W


def gaussian_prior() -> tuple[torch.Tensor, torch.Tensor]:
    """Mean 0 and a smooth covariance over the 2x4 pixel grid (correlation exp(-distance / 3))."""
    pos = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij"), -1).reshape(D, 2).double()
    return torch.zeros(D, dtype=torch.float64), torch.exp(-torch.cdist(pos, pos) / 3.0)


def exact_denoiser(mu: torch.Tensor, sigma: torch.Tensor, calls: list | None = None):
    """E[eps | x_t] for flattened x0 ~ N(mu, sigma), on batches of any shape; counts its calls in ``calls``."""
    eye = torch.eye(len(mu), dtype=torch.float64)

    def model(x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        if calls is not None:
            calls.append(int(t[0]))
        a = DIFFUSION.alpha_bar(t[:1], x).reshape(()).double()
        flat = x.reshape(len(x), -1).double()
        eps = (1 - a).sqrt() * torch.linalg.solve(a * sigma + (1 - a) * eye, (flat - a.sqrt() * mu).T).T
        return eps.reshape(x.shape).to(x.dtype)

    return model


@pytest.fixture(scope="module")
def gaussian_problem():
    mu, sigma = gaussian_prior()
    y = torch.linalg.cholesky(sigma) @ torch.randn(D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    known = torch.zeros(1, 1, H, W, dtype=torch.float64)
    known[..., : W // 2] = 1  # the left half is known: outpaint the right half
    k = known.flatten().bool()
    # Posterior mean of the unknown pixels: mu_u + S_uk S_kk^-1 (y_k - mu_k).
    cond_mean = mu[~k] + sigma[~k][:, k] @ torch.linalg.solve(sigma[k][:, k], y[k] - mu[k])
    return exact_denoiser(mu, sigma), y.reshape(1, 1, H, W), known, k, cond_mean


N = 1000


@pytest.mark.parametrize("method", ["newton", "replace", "dps"])
def test_known_region_is_kept_and_the_rest_follows_the_posterior(gaussian_problem, method):
    """Known pixels stay at y; the unknown pixels move from the prior mean 0 towards their posterior mean.

    Tolerances (1000 samples, 20 DDIM steps, eta=1). ``replace`` pastes y, so it is exact.
    ``newton`` ends within 0.15 of y: its last corrections move x_t by lambda_k = 0.5 .. 0.1 in
    the max norm whatever the remaining error, which leaves a residual of the order of the last
    step (measured: max 0.09). ``dps`` only pulls towards y (a gradient step of fixed scale per
    DDIM step): its mean error is bounded, not its max. None of the three samples the posterior
    exactly (replace is known to under-shoot it); each must still land at least half-way from the
    prior mean (0) to the posterior mean, which a sampler ignoring the constraint does not (see the
    negative control below).
    """
    model, y, known, k, cond_mean = gaussian_problem
    sampler = DDIMSampler(DIFFUSION, eta=1.0, steps=20)
    out = constrained_sample(method, model, sampler, y.expand(N, -1, -1, -1), known, torch.Generator().manual_seed(1))
    flat = out.reshape(N, D)
    error = (flat[:, k] - y.flatten()[k]).abs()
    if method == "replace":
        assert error.max() == 0
    elif method == "newton":
        assert error.max() < 0.15
    else:
        assert error.mean() < 0.5
    unknown_mean = flat[:, ~k].mean(0)
    progress = (unknown_mean @ cond_mean) / (cond_mean @ cond_mean)  # 0: prior mean, 1: posterior mean
    assert progress > 0.5, f"{method}: unknown mean {unknown_mean.tolist()} vs posterior mean {cond_mean.tolist()}"
    assert flat[:, ~k].std(0).min() > 0.2  # still random where unknown, not a single fixed completion


def test_without_the_constraint_the_checks_fail(gaussian_problem):
    """Negative control: plain sampling (Newton with 0 iterations) keeps neither y nor the posterior mean."""
    model, y, known, k, cond_mean = gaussian_problem
    sampler = DDIMSampler(DIFFUSION, eta=1.0, steps=20)
    out = constrained_sample(
        "newton", model, sampler, y.expand(N, -1, -1, -1), known, torch.Generator().manual_seed(1),
        newton=NewtonSettings(iterations=0),
    )  # fmt: skip
    flat = out.reshape(N, D)
    assert (flat[:, k] - y.flatten()[k]).abs().max() > 1.0
    progress = (flat[:, ~k].mean(0) @ cond_mean) / (cond_mean @ cond_mean)
    assert progress < 0.2


def test_newton_calls_the_network_one_plus_two_k_times_per_step(gaussian_problem):
    _, y, known, _, _ = gaussian_problem
    mu, sigma = gaussian_prior()
    calls: list[int] = []
    sampler = DDIMSampler(DIFFUSION, eta=0.0, steps=7)
    settings = NewtonSettings(iterations=3)
    constrained_sample("newton", exact_denoiser(mu, sigma, calls), sampler, y, known, newton=settings)
    assert len(calls) == 7 * (1 + 2 * 3) == 7 * network_calls_per_step("newton", settings)
    assert calls[:7] == [int(sampler.timesteps[0])] * 7  # all corrections happen at the step's own timestep
    calls.clear()
    constrained_sample("replace", exact_denoiser(mu, sigma, calls), sampler, y, known)
    assert calls == sampler.timesteps.tolist()


def test_newton_step_sizes_fall_linearly():
    assert NewtonSettings().step_sizes() == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    assert NewtonSettings(iterations=1).step_sizes() == [0.5]
    assert NewtonSettings(iterations=0).step_sizes() == []
    with pytest.raises(ValueError, match="fd_step"):
        NewtonSettings(fd_step=0)


def test_newton_with_dpm_solver_keeps_the_known_region(gaussian_problem):
    """Any sampler with timesteps/step works, including the multistep DPM-Solver++ (reset per run)."""
    model, y, known, k, _ = gaussian_problem
    sampler = DPMSolverPlusPlusSampler(DIFFUSION, steps=15)
    first = constrained_sample(
        "newton", model, sampler, y.expand(200, -1, -1, -1), known, torch.Generator().manual_seed(2)
    )
    again = constrained_sample(
        "newton", model, sampler, y.expand(200, -1, -1, -1), known, torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(first, again)  # no solver history leaks from the first run into the second
    assert (first.reshape(200, D)[:, k] - y.flatten()[k]).abs().max() < 0.15


# -- a tiny random UNet -----------------------------------------------------------------------------
def tiny_unet(in_channels: int = 1, image_size: int = 8, num_classes: int | None = None) -> UNet:
    torch.manual_seed(0)
    net = UNet(image_size, in_channels, 8, (1, 2), 1, (), head_channels=8, num_classes=num_classes)
    return net.eval().requires_grad_(False)


def tamed(net: UNet):
    """The random UNet with its eps prediction scaled by 0.05.

    Untrained, it predicts eps of norm ~20 instead of ~1, so its x0 estimates reach +-70 and no
    constraint method can pull them to data of range 1 in a few steps. Scaled, it behaves like a
    (poor) trained denoiser: x0 estimates of the data's scale, still a non-linear function of x_t.
    """
    return lambda x, t, labels=None: 0.05 * net(x, t, labels)


@pytest.mark.parametrize("method", ["newton", "replace"])
def test_unet_inpainting_keeps_the_known_half_and_changes_the_rest(method):
    net = tamed(tiny_unet())
    images = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).repeat(2, 1, 1, 1)
    hole = named_hole("right_half", 8, 8)
    sampler = DDIMSampler(DIFFUSION, eta=1.0, steps=5, clip_sample=True)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    result = inpaint(net, sampler, images, known_mask(hole), method=method, generator=generators)
    psnr_known = masked_psnr(result.images, images, known_mask(hole))
    assert (psnr_known > 30).all(), psnr_known  # within ~0.06 RMS of the input on [-1, 1]
    changed = ((result.images - images).abs() * hole).flatten(1).amax(1)
    assert (changed > 0.1).all()
    assert not torch.equal(result.images[0], result.images[1])  # two seeds, two completions


def test_per_sample_generators_make_results_independent_of_the_batch():
    net = tamed(tiny_unet())
    images = torch.zeros(3, 1, 8, 8)
    known = known_mask(named_hole("center", 8, 8))
    sampler = DDIMSampler(DIFFUSION, eta=1.0, steps=3)
    batch = inpaint(
        net, sampler, images, known, "newton", generator=[torch.Generator().manual_seed(i) for i in range(3)]
    )
    alone = inpaint(net, sampler, images[2:], known, "newton", generator=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(batch.images[2:], alone.images, atol=1e-5, rtol=1e-5)


# -- latent space ---------------------------------------------------------------------------------
class UnshuffleFirstStage(FirstStage):
    """An exact first stage: ``pixel_unshuffle`` by 2 (1x8x8 images <-> 4x4x4 latents)."""

    def __init__(self) -> None:
        super().__init__(image_channels=1, latent_channels=4, downsample_factor=2)
        self._freeze()

    def encode_raw(self, x, generator=None):
        return torch.nn.functional.pixel_unshuffle(x, 2)

    def decode_raw(self, raw):
        return torch.nn.functional.pixel_shuffle(raw, 2)

    def _describe_source(self):
        return {"kind": "unshuffle", "source": None}


def test_downsample_mask_keeps_only_fully_known_latents():
    known = torch.ones(1, 1, 4, 8)
    known[..., 5:] = 0  # columns 5..7 unknown: latent column 2 covers pixels 4 and 5, half known
    assert downsample_mask(known, 2)[0, 0, 0].tolist() == [1, 1, 0, 0]
    assert downsample_mask(known, 2, threshold=0.5)[0, 0, 0].tolist() == [1, 1, 1, 0]
    assert downsample_mask(known, 1) is known
    with pytest.raises(ConstraintError, match="not divisible"):
        downsample_mask(torch.ones(1, 1, 5, 5), 2)


@pytest.mark.parametrize("method", ["replace", "newton"])
def test_latent_inpainting_encodes_samples_and_decodes(method):
    stage = UnshuffleFirstStage()
    stage.set_latent_stats([0.1], [0.5])
    # The exact denoiser of smooth Gaussian latents (correlation exp(-|i - j| / 3) along the flattened latent).
    index = torch.arange(64, dtype=torch.float64)
    model = exact_denoiser(torch.zeros(64, dtype=torch.float64), torch.exp(-(index[:, None] - index[None]).abs() / 3))
    images = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    hole = named_hole("right_half", 8, 8)
    sampler = DDIMSampler(DIFFUSION, eta=1.0, steps=6)
    result = inpaint(
        model, sampler, images, known_mask(hole), method, first_stage=stage, generator=torch.Generator().manual_seed(0)
    )
    assert result.samples.shape == (1, 4, 4, 4) and result.images.shape == (1, 1, 8, 8)
    assert result.sample_mask[0, 0].tolist() == [[1, 1, 0, 0]] * 4
    psnr = masked_psnr(result.images, images, known_mask(hole))
    if method == "replace":  # pasted exactly in latent space; this first stage is exact up to float32 rounding
        assert (psnr > 100).all(), psnr
    else:
        assert (psnr > 30).all(), psnr
    assert ((result.images - images).abs() * hole).max() > 0.1


def test_latent_paste_known_restores_the_known_pixels():
    torch.manual_seed(0)
    stage = KLFirstStage(KLAutoencoder(1, 8, [1, 2], 1, 2, [], image_size=8, mid_attention=False, head_channels=8))
    net = tamed(tiny_unet(in_channels=2, image_size=4))
    images = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    known = known_mask(named_hole("center", 8, 8))
    sampler = DDIMSampler(DIFFUSION, steps=2)
    lossy = inpaint(
        net, sampler, images, known, "replace", first_stage=stage, generator=torch.Generator().manual_seed(0)
    )
    pasted = inpaint(
        net,
        sampler,
        images,
        known,
        "replace",
        first_stage=stage,
        generator=torch.Generator().manual_seed(0),
        paste_known=True,
    )
    assert torch.isfinite(masked_psnr(lossy.images, images, known)).all()  # an untrained autoencoder is lossy
    assert torch.equal(pasted.images * known, images * known)
    torch.testing.assert_close(pasted.images * (1 - known), lossy.images * (1 - known))


# -- masks and images ---------------------------------------------------------------------------------
def test_named_holes():
    assert named_hole("right_half", 4, 6)[0, 0].tolist() == [[0, 0, 0, 1, 1, 1]] * 4
    assert named_hole("top_half", 4, 2)[0, 0].tolist() == [[1, 1], [1, 1], [0, 0], [0, 0]]
    center = named_hole("center", 8, 8)[0, 0]
    assert center.sum() == 16 and center[2:6, 2:6].all()
    with pytest.raises(ConstraintError, match="unknown mask name 'middle'"):
        named_hole("middle", 8, 8)


def test_image_fitting(tmp_path):
    array = (torch.arange(28 * 28) % 256).to(torch.uint8).reshape(28, 28).numpy()
    Image.fromarray(array).save(tmp_path / "small.png")
    padded, original = load_image(tmp_path / "small.png", 1, 32, fit="pad")
    assert original == (28, 28) and padded.shape == (1, 1, 32, 32)
    assert (padded[..., :2, :] == -1).all() and padded[0, 0, 2, 2] == array[0, 0] / 127.5 - 1
    resized, _ = load_image(tmp_path / "small.png", 3, 16, fit="resize")
    assert resized.shape == (1, 3, 16, 16)
    hole = fit_hole(named_hole("right_half", 28, 28), 32, "pad")
    assert hole[0, 0, 16].tolist() == [0] * 16 + [1] * 14 + [0] * 2  # the padding is known background


# -- bad input ----------------------------------------------------------------------------------------
def test_mask_of_another_shape_is_refused():
    images = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ConstraintError, match=r"mask's shape \(1, 1, 8, 6\) does not fit the image's \(2, 1, 8, 8\)"):
        check_problem(images, torch.ones(1, 1, 8, 6))
    with pytest.raises(ConstraintError, match="only 0 .* and 1"):
        check_problem(images, torch.full((8, 8), 0.5))
    assert check_problem(images, torch.ones(8, 8)).shape == (1, 1, 8, 8)


def test_image_of_the_wrong_size_and_unreadable_files(tmp_path):
    Image.new("L", (28, 30)).save(tmp_path / "odd.png")
    with pytest.raises(ConstraintError, match="odd.png is 28x30 but the model makes 32x32 images.*fit=resize"):
        load_image(tmp_path / "odd.png", 1, 32, fit="error")
    with pytest.raises(ConstraintError, match="larger than the model's 16x16.*fit=resize"):
        load_image(tmp_path / "odd.png", 1, 16, fit="pad")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConstraintError, match="cannot read image .*broken.png"):
        load_image(tmp_path / "broken.png", 1, 32)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        load_image(tmp_path / "missing.png", 1, 32)
    Image.new("L", (32, 32)).save(tmp_path / "mask.png")
    with pytest.raises(ConstraintError, match="mask .*mask.png is 32x32 .* but the image is 28x30"):
        read_hole_image(tmp_path / "mask.png", size=(28, 30))


def test_class_labels_out_of_range_are_refused():
    net = tiny_unet(num_classes=3)
    with pytest.raises(ConstraintError, match="class label 3 is out of range: this model has 3 classes, labels 0..2"):
        check_class_labels(net, torch.tensor([0, 3]), 2)
    with pytest.raises(ConstraintError, match="unconditional"):
        check_class_labels(tiny_unet(), torch.tensor([0]), 1)
    check_class_labels(net, torch.tensor([0, 2]), 2)


def test_unknown_method_is_named():
    with pytest.raises(ConstraintError, match="unknown constrained-sampling method 'paint'"):
        constrained_sample(
            "paint", tiny_unet(), DDIMSampler(DIFFUSION, steps=2), torch.zeros(1, 1, 8, 8), torch.ones(8, 8)
        )


# -- the CLI ----------------------------------------------------------------------------------------
def load_script():
    spec = importlib.util.spec_from_file_location("inpaint_script", ROOT / "scripts" / "inpaint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pixel_checkpoint(path: Path, num_classes: int | None = None) -> Path:
    """A checkpoint laid out as train.py writes it: EMA weights, raw weights and the run config."""
    net = tiny_unet(num_classes=num_classes)
    model_cfg = dict(
        _target_="spectral_diffusion.networks.UNet", image_size=8, in_channels=1, base_channels=8,
        channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], head_channels=8, num_classes=num_classes,
    )  # fmt: skip
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {
            "global_step": 3,
            "state_dict": state,
            "current_model_state": state,
            METADATA_KEY: {
                "config": {
                    "model": model_cfg,
                    "diffusion": {"_target_": "spectral_diffusion.diffusion.GaussianDiffusion", "schedule": "linear"},
                    "autoencoder": {"_target_": "spectral_diffusion.autoencoders.IdentityFirstStage", "channels": 1},
                }
            },
        },
        path,
    )
    return path


def test_cli_writes_result_mask_and_grid_next_to_the_image(tmp_path):
    ckpt = pixel_checkpoint(tmp_path / "tiny.ckpt")
    Image.fromarray((torch.arange(64) * 4).to(torch.uint8).reshape(8, 8).numpy()).save(tmp_path / "shirt.png")
    cfg = compose_config(
        "inpaint",
        tmp_path,
        [f"ckpt_path={ckpt}", f"image={tmp_path / 'shirt.png'}", "mask=right_half", "method=newton", "num_samples=2",
         "sampler.steps=3", "newton.iterations=2", "device=cpu"],
    )  # fmt: skip
    metrics = load_script().run_inpaint(cfg)
    result = Image.open(tmp_path / "shirt_newton_result.png")
    assert result.size == (16, 8)  # two samples side by side at the model's size
    mask = torch.from_numpy(np.asarray(Image.open(tmp_path / "shirt_mask.png")).copy())
    assert mask[:, 4:].eq(255).all() and mask[:, :4].eq(0).all()  # white = generated
    assert Image.open(tmp_path / "shirt_newton_grid.png").size[0] > 5 * 8
    assert metrics["network_calls"] == 3 * 5 and metrics["weights"] == "ema"
    # An untrained network: the PSNR is only reported, one finite value per sample.
    assert len(metrics["psnr_known_db"]) == 2 and all(isinstance(p, float) for p in metrics["psnr_known_db"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == "newton"


def test_cli_refuses_bad_labels_and_wrong_sizes(tmp_path):
    script = load_script()
    Image.new("L", (10, 10)).save(tmp_path / "x.png")
    base = [f"image={tmp_path / 'x.png'}", "sampler.steps=2", "num_samples=1", "device=cpu"]
    conditional = pixel_checkpoint(tmp_path / "cond.ckpt", num_classes=3)
    cfg = compose_config("inpaint", tmp_path, [f"ckpt_path={conditional}", "class_label=7", *base])
    with pytest.raises(ValueError, match="class_label=7 is out of range: this model has 3 classes"):
        script.run_inpaint(cfg)
    cfg = compose_config("inpaint", tmp_path, [f"ckpt_path={conditional}", *base])
    with pytest.raises(ValueError, match="class-conditional: give class_label=0..2"):
        script.run_inpaint(cfg)
    plain = pixel_checkpoint(tmp_path / "plain.ckpt")
    cfg = compose_config("inpaint", tmp_path, [f"ckpt_path={plain}", "fit=error", *base])
    with pytest.raises(ConstraintError, match="x.png is 10x10 but the model makes 8x8 images"):
        script.run_inpaint(cfg)
    cfg = compose_config("inpaint", tmp_path, [f"ckpt_path={plain}", "method=paint", *base])
    with pytest.raises(ValueError, match="method='paint' is not one of"):
        script.run_inpaint(cfg)


def latent_checkpoint(tmp_path: Path) -> Path:
    """A latent diffusion checkpoint over the framework's own (tiny, untrained) KL autoencoder, f = 4."""
    torch.manual_seed(0)
    ae_cfg = dict(in_channels=1, base_channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, latent_channels=4,
                  attention_resolutions=[], mid_attention=False, head_channels=8, dropout=0.0, image_size=32)  # fmt: skip
    stage = KLFirstStage(KLAutoencoder(**ae_cfg))
    stage.set_latent_stats([0.1, -0.2, 0.3, 0.0], [0.5, 2.0, 1.0, 0.25])
    ae_ckpt = tmp_path / "ae.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in stage.net.state_dict().items()},
            METADATA_KEY: {
                "config": {"model": {"_target_": "spectral_diffusion.autoencoders.KLAutoencoder", **ae_cfg}},
                "latent_stats": stage.latent_stats(),
            },
        },
        ae_ckpt,
    )
    net = tiny_unet(in_channels=4, image_size=8)
    model_cfg = dict(
        _target_="spectral_diffusion.networks.UNet", image_size=8, in_channels=4, base_channels=8,
        channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], head_channels=8,
    )  # fmt: skip
    path = tmp_path / "latent.ckpt"
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            METADATA_KEY: {
                "config": {
                    "model": model_cfg,
                    "diffusion": {"_target_": "spectral_diffusion.diffusion.GaussianDiffusion"},
                    "autoencoder": {
                        "_target_": "spectral_diffusion.autoencoders.FrameworkAutoencoder",
                        "ckpt_path": str(ae_ckpt),
                    },
                },
                "latent_stats": stage.latent_stats(),
            },
        },
        path,
    )
    return path


def test_cli_latent_model_with_a_mask_image_and_paste_known(tmp_path):
    ckpt = latent_checkpoint(tmp_path)
    Image.fromarray((torch.arange(32 * 32) % 200).to(torch.uint8).reshape(32, 32).numpy()).save(tmp_path / "bag.png")
    hole = np.zeros((32, 32), np.uint8)
    hole[8:24, 8:24] = 255
    Image.fromarray(hole).save(tmp_path / "hole.png")
    cfg = compose_config(
        "inpaint",
        tmp_path,
        [f"ckpt_path={ckpt}", f"image={tmp_path / 'bag.png'}", f"mask={tmp_path / 'hole.png'}", "method=replace",
         "paste_known=true", "num_samples=1", "sampler.steps=2", "sampler.clip_sample=false", "device=cpu"],
    )  # fmt: skip
    metrics = load_script().run_inpaint(cfg)
    assert metrics["latent"] is True and metrics["psnr_known_db"] == ["inf"]  # the known pixels are pasted back
    result = np.asarray(Image.open(tmp_path / "bag_replace_result.png"))
    original = np.asarray(Image.open(tmp_path / "bag.png"))
    assert result.shape == (32, 32) and (result[hole == 0] == original[hole == 0]).all()
    assert (result[hole == 255] != original[hole == 255]).any()


def test_bench_script_parses_runs_and_writes_exact_psnr_as_such():
    spec = importlib.util.spec_from_file_location("bench_inpainting", ROOT / "scripts" / "bench_inpainting.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_run("newton:20") == ("newton", 20)
    with pytest.raises(Exception, match="METHOD:STEPS"):
        bench.parse_run("paint:20")
    assert bench.mean_psnr(torch.tensor([float("inf"), 20.0, 30.0])) == 25.0
    row = dict(mask="center", method="replace", steps=50, nfe=50, psnr_known_db=float("inf"), psnr_hole_db=12.0, fd=3.0,
               s_per_image=0.1)  # fmt: skip
    assert "| center | replace | 50 | 50 | exact (pasted) | 12.00 | 3.00 | 0.100 |" in bench.markdown_table(
        [row], 2.0, 200, "x"
    )
