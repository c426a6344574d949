"""Spectrum-aware distillation: the loss's analytic properties, frozen teachers, and runs through train.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from spectral_diffusion.assembly.teachers import checkpoint_teacher, diffusers_teacher
from spectral_diffusion.bundles import ModelBundle, diffusion_from_scheduler_config
from spectral_diffusion.diffusion import GaussianDiffusion
from spectral_diffusion.losses import DenoisingLoss
from spectral_diffusion.losses.distillation import (
    SpectralDistillationLoss,
    frequency_distance,
    spectral_weights,
)
from spectral_diffusion.networks import UNet
from spectral_diffusion.teachers import Teacher, TeacherMismatchError, check_teacher_fits
from spectral_diffusion.utils.checkpoint import load_checkpoint

from .conftest import compose_config


def tiny_unet(**overrides) -> UNet:
    kwargs = dict(image_size=16, in_channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, head_channels=8)
    kwargs.update(overrides)
    return UNet(**kwargs)


def framework_teacher(net: torch.nn.Module, diffusion: GaussianDiffusion) -> Teacher:
    return Teacher(
        ModelBundle(net, diffusion, None, (net.in_channels, net.image_size, net.image_size), net.num_classes)
    )


def pink_noise(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images with a natural-image-like 1/f amplitude spectrum (most energy at low frequencies)."""
    g = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(size).abs()[:, None]
    fx = torch.fft.fftfreq(size).abs()[None, :]
    amplitude = 1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / size)
    spectrum = torch.fft.fft2(torch.randn(n, channels, size, size, generator=g)) * amplitude
    return torch.fft.ifft2(spectrum).real


# -- the frequency weights ------------------------------------------------------------------------
def test_alpha_minus_one_weights_favour_weak_high_frequencies() -> None:
    x0 = pink_noise(4, 3, 32)
    w = spectral_weights(x0, alpha=-1.0)
    assert w.shape == (4, 1, 32, 32)
    assert torch.allclose(w.mean(dim=(2, 3)), torch.ones(4, 1), atol=1e-5)  # normalised to mean 1
    magnitude = torch.fft.fft2(x0, norm="ortho").abs().mean(dim=1, keepdim=True)
    # The weight is a decreasing function of the magnitude: sorted by magnitude, weights never rise.
    flat_w, flat_m = w.flatten(1), magnitude.flatten(1)
    by_magnitude = flat_w.gather(1, flat_m.argsort(dim=1))
    assert (by_magnitude[:, 1:] <= by_magnitude[:, :-1] * (1 + 1e-5)).all()
    # High frequencies (|f| near Nyquist) weigh far more than the lowest non-DC ones.
    f = torch.sqrt(torch.fft.fftfreq(32)[:, None] ** 2 + torch.fft.fftfreq(32)[None, :] ** 2)
    high, low = w[..., f > 0.4].mean(), w[..., (f > 0) & (f < 0.07)].mean()
    assert high > 5 * low  # amplitude ~ 1/|f|: about 0.45 / 0.05 = 9x


def test_alpha_zero_is_uniform_and_parseval_makes_it_the_spatial_mse() -> None:
    x0 = pink_noise(2, 3, 16)
    assert torch.allclose(spectral_weights(x0, alpha=0.0), torch.ones(2, 1, 16, 16))
    a, b = torch.randn(2, 5, 16, 16), torch.randn(2, 5, 16, 16)
    assert frequency_distance(a, b, None).item() == pytest.approx(torch.mean((a - b) ** 2).item(), rel=1e-5)


def test_magnitude_floor_keeps_weights_finite_for_flat_images() -> None:
    x0 = torch.ones(1, 1, 8, 8)  # all energy at DC: every other coefficient is exactly zero
    w = spectral_weights(x0, alpha=-1.0)
    assert torch.isfinite(w).all() and w.mean().item() == pytest.approx(1.0, rel=1e-5)


# -- the loss -------------------------------------------------------------------------------------
def test_loss_is_plain_ddpm_when_student_equals_teacher() -> None:
    torch.manual_seed(0)
    diffusion = GaussianDiffusion("linear", 1000)
    student = tiny_unet(attention_resolutions=(8,))
    torch.nn.init.normal_(student.conv_out.weight, std=0.1)  # a non-trivial output
    teacher = framework_teacher(copy.deepcopy(student), diffusion)
    loss = SpectralDistillationLoss(diffusion, teacher, student)
    assert len(loss.adapters) == 2  # both decoder levels (16 and 8) are shared
    x0 = pink_noise(3, 2, 16)
    terms = loss.terms(student, x0, None, torch.Generator().manual_seed(1))
    assert terms["spatial"].item() < 1e-12 and terms["freq"].item() < 1e-12
    plain = DenoisingLoss(diffusion)(student, x0, None, torch.Generator().manual_seed(1))
    assert terms["loss"].item() == pytest.approx(plain.item(), rel=1e-6)


def test_loss_grows_with_the_teacher_student_gap_and_only_the_student_gets_gradients() -> None:
    torch.manual_seed(0)
    diffusion = GaussianDiffusion("linear", 1000)
    student = tiny_unet()
    teacher_net = tiny_unet(base_channels=16)  # another width: adapters 8->16 and 16->32 channels
    torch.nn.init.normal_(teacher_net.conv_out.weight, std=0.1)
    teacher = framework_teacher(teacher_net, diffusion)
    loss = SpectralDistillationLoss(diffusion, teacher, student)
    assert [(a.in_channels, a.out_channels) for a in loss.adapters] == [(16, 32), (8, 16)]
    terms = loss.terms(student, pink_noise(2, 2, 16), None, torch.Generator().manual_seed(0))
    assert terms["spatial"] > 0 and terms["freq"] > 0
    terms["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in loss.adapters.parameters())
    assert student.conv_in.weight.grad is not None
    # The teacher is not part of the loss module: no parameters, no state_dict entries.
    assert all(k.startswith("adapters.") for k in loss.state_dict())


def test_normalised_feature_terms_are_relative_errors_one_each_for_a_zero_student() -> None:
    # With the adapters zeroed the student "predicts" 0 for every teacher feature: each feature's
    # relative error is exactly 1, whatever the feature's scale, and by Parseval (alpha = 0) the
    # frequency term is the same sum. Unnormalised, each feature adds its raw mean square instead.
    torch.manual_seed(0)
    diffusion = GaussianDiffusion("linear", 1000)
    student, teacher_net = tiny_unet(), tiny_unet(base_channels=16)
    torch.nn.init.normal_(teacher_net.conv_out.weight, std=0.1)
    teacher = framework_teacher(teacher_net, diffusion)
    x0 = pink_noise(2, 2, 16)
    terms = {}
    for normalize in (True, False):
        loss = SpectralDistillationLoss(diffusion, teacher, student, alpha=0.0, normalize_features=normalize)
        for adapter in loss.adapters:
            torch.nn.init.zeros_(adapter.weight)
            torch.nn.init.zeros_(adapter.bias)
        terms[normalize] = loss.terms(student, x0, None, torch.Generator().manual_seed(0))
    x_t, t, _ = loss.denoising.noised_batch(x0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        output_mse = torch.mean((teacher_net(x_t, t) - student(x_t, t)) ** 2).item()
    assert len(loss.adapters) == 2
    assert terms[True]["spatial"].item() == pytest.approx(output_mse + 2.0, rel=1e-5)
    assert terms[True]["freq"].item() == pytest.approx(output_mse + 2.0, rel=1e-4)
    assert terms[False]["spatial"].item() != pytest.approx(output_mse + 2.0, rel=1e-2)
    assert terms[False]["freq"].item() == pytest.approx(terms[False]["spatial"].item(), rel=1e-4)


def test_output_only_ablation_has_no_adapters_and_ignores_features() -> None:
    diffusion = GaussianDiffusion("linear", 1000)
    student, teacher_net = tiny_unet(), tiny_unet(base_channels=16)
    loss = SpectralDistillationLoss(diffusion, framework_teacher(teacher_net, diffusion), student, features=False)
    assert len(loss.adapters) == 0
    terms = loss.terms(student, pink_noise(2, 2, 16), None, torch.Generator().manual_seed(0))
    # Output only: the spatial term is the MSE between the two outputs at the same x_t, t.
    g = torch.Generator().manual_seed(0)
    x_t, t, _ = loss.denoising.noised_batch(pink_noise(2, 2, 16), g)
    with torch.no_grad():
        expected = torch.mean((teacher_net(x_t, t) - student(x_t, t)) ** 2)
    assert terms["spatial"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_output_is_converted_to_the_students_prediction_type() -> None:
    eps_diffusion = GaussianDiffusion("linear", 1000, prediction_type="eps")
    teacher_net = tiny_unet()
    torch.nn.init.normal_(teacher_net.conv_out.weight, std=0.1)
    teacher = framework_teacher(teacher_net, eps_diffusion)
    x_t, t = torch.randn(3, 2, 16, 16), torch.tensor([10, 500, 990])
    eps = teacher(x_t, t)
    a = eps_diffusion.alpha_bar(t, x_t)
    x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    assert torch.allclose(teacher.predict_as("x0", x_t, t), x0, atol=1e-5)
    assert torch.allclose(teacher.predict_as("v", x_t, t), a.sqrt() * eps - (1 - a).sqrt() * x0, atol=1e-5)


# -- compatibility checks -------------------------------------------------------------------------
def test_mismatched_schedule_and_shape_errors_name_both_sides() -> None:
    student = tiny_unet()
    teacher = framework_teacher(tiny_unet(), GaussianDiffusion("cosine", 1000))
    with pytest.raises(TeacherMismatchError, match=r"(?s)teacher.*cosine.*student.*linear"):
        check_teacher_fits(teacher, student, GaussianDiffusion("linear", 1000))
    other = framework_teacher(tiny_unet(in_channels=3), GaussianDiffusion("linear", 1000))
    with pytest.raises(TeacherMismatchError, match=r"\(3, 16, 16\).*\(2, 16, 16\)"):
        check_teacher_fits(other, student, GaussianDiffusion("linear", 1000))
    # Only the prediction type differs: allowed (the teacher's output is converted).
    v_teacher = framework_teacher(tiny_unet(), GaussianDiffusion("linear", 1000, prediction_type="v"))
    check_teacher_fits(v_teacher, student, GaussianDiffusion("linear", 1000))


@pytest.mark.parametrize(
    "schedule, ours",
    [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("squaredcos_cap_v2", "cosine")],
)
def test_scheduler_configs_map_to_the_same_alpha_bar(schedule: str, ours: str) -> None:
    scheduler = DDPMScheduler(
        beta_schedule=schedule, beta_start=0.0015, beta_end=0.0195, prediction_type="v_prediction"
    )
    diffusion = diffusion_from_scheduler_config(dict(scheduler.config))
    assert diffusion.schedule == ours and diffusion.prediction_type == "v"
    assert torch.allclose(diffusion.alphas_cumprod.float(), scheduler.alphas_cumprod, atol=1e-6)


# -- diffusers teachers and runs through train.py -----------------------------------------------
def save_diffusers_teacher(root: Path, in_channels: int = 1, size: int = 32, vq: bool = False) -> Path:
    """A tiny diffusers model in the CompVis LDM layout (unet/, scheduler/, optionally vqvae/)."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    unet.save_pretrained(root / "unet")
    DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02).save_pretrained(root / "scheduler")
    if vq:
        from diffusers import VQModel

        VQModel(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=in_channels,
            norm_num_groups=4,
            num_vq_embeddings=16,
            vq_embed_dim=in_channels,
        ).save_pretrained(root / "vqvae")
    return root


def test_diffusers_teacher_loads_with_its_schedule_and_features(tmp_path: Path) -> None:
    teacher = diffusers_teacher(str(save_diffusers_teacher(tmp_path / "ddpm")))
    assert teacher.input_shape == (1, 32, 32) and teacher.first_stage is None
    assert teacher.diffusion.describe()["schedule"] == "linear"
    student = UNet(
        image_size=32, in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, head_channels=8
    )
    loss = SpectralDistillationLoss(teacher.diffusion, teacher, student)
    assert [(a.in_channels, a.out_channels) for a in loss.adapters] == [(16, 16), (8, 8)]
    with pytest.raises(Exception, match=r"unet/ \(UNet2DModel\)"):
        diffusers_teacher(str(tmp_path / "missing_layout"))


def run_distillation(train_cfg, *overrides: str):
    from train import train

    cfg = train_cfg("loss=spectral_distill", "diffusion=ddpm_linear", "callbacks.sample_grid.num_samples=2", *overrides)
    train(cfg)
    return cfg, load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")


def test_tiny_diffusers_teacher_distils_a_student_through_train_py(train_cfg, tmp_path: Path) -> None:
    teacher_dir = save_diffusers_teacher(tmp_path / "teacher")
    cfg, ckpt = run_distillation(train_cfg, "teacher=diffusers", f"teacher.path={teacher_dir}")
    state = ckpt["state_dict"]
    assert ckpt["global_step"] == cfg.trainer.max_steps
    assert any(k.startswith("loss.adapters.") for k in state)
    assert all(k.startswith(("net.", "loss.adapters.")) for k in state), "only the student and its adapters"
    from spectral_diffusion.assembly import build_network

    assert sum(k.startswith("net.") for k in state) == len(build_network(cfg.model).state_dict())
    assert ckpt["spectral_diffusion"]["teacher"]["source"].startswith("diffusers:")
    metrics = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text()
    assert "train/spatial" in metrics and "train/freq" in metrics


def test_student_lives_in_the_diffusers_teachers_latent_space(train_cfg, tmp_path: Path) -> None:
    teacher_dir = save_diffusers_teacher(tmp_path / "ldm", in_channels=3, size=16, vq=True)
    cfg, ckpt = run_distillation(
        train_cfg,
        "teacher=diffusers",
        f"teacher.path={teacher_dir}",
        "model.in_channels=3",
        "model.image_size=16",
    )
    meta = ckpt["spectral_diffusion"]
    assert meta["latent_stats"] == {"shift": [0.0] * 3, "scale": [1.0] * 3}  # LDMPipeline: raw latents
    assert not any("vqvae" in k or "first_stage" in k for k in ckpt["state_dict"])
    # The checkpoint records the teacher's autoencoder as its own, so it decodes by itself.
    assert meta["config"]["autoencoder"]["subfolder"] == "vqvae"
    assert Image.open(Path(cfg.paths.output_dir) / "samples" / "final.png").mode == "L"  # decoded: 1 channel
    from evaluate import evaluate

    ckpt_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    metrics = evaluate(compose_config("evaluate", tmp_path / "eval", [f"ckpt_path={ckpt_path}", "grid_samples=2"]))
    assert metrics["first_stage"] == "diffusers_vq" and metrics["input_shape"] == "3x16x16"
    grid = Image.open(metrics["samples_png"])
    assert grid.mode == "L"  # decoded back to 1-channel images, not 3-channel latents


def test_framework_checkpoint_teacher_round_trip(train_cfg, tmp_path: Path) -> None:
    from train import train

    teacher_cfg = train_cfg("run_name=teacher")
    train(teacher_cfg)
    teacher_ckpt = Path(teacher_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    teacher = checkpoint_teacher(str(teacher_ckpt))
    assert teacher.input_shape == (1, 32, 32) and teacher.diffusion.describe()["schedule"] == "linear"
    # teacher.torch_dtype=bfloat16: a bf16 network that still answers in the student's float32
    bf16 = checkpoint_teacher(str(teacher_ckpt), torch_dtype="bfloat16")
    assert next(bf16.net.parameters()).dtype == torch.bfloat16
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    full, half = teacher(x, t), bf16(x, t)
    assert half.dtype == torch.float32
    assert (half - full).abs().max() <= 0.05 * full.abs().max() + 1e-3
    with pytest.raises(ValueError, match="teacher.torch_dtype='int8' is not a floating torch dtype"):
        checkpoint_teacher(str(teacher_ckpt), torch_dtype="int8")
    overrides = ["debug=tiny", f"data.root={teacher_cfg.data.root}", "data.download=false", "logger=csv"]
    overrides += ["callbacks.progress=null", "loss=spectral_distill", "teacher=checkpoint"]
    cfg = compose_config("train", tmp_path / "student", overrides + [f"teacher.ckpt_path={teacher_ckpt}"])
    train(cfg)
    ckpt = load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert ckpt["spectral_diffusion"]["teacher"]["source"].endswith("last.ckpt")
    # Same architecture: the adapters started as identities, and the teacher's weights are not stored.
    assert sum(k.startswith("net.") for k in ckpt["state_dict"]) == len(teacher.net.state_dict())


def test_distillation_without_teacher_is_a_clear_error(train_cfg) -> None:
    from spectral_diffusion.assembly import ConfigError
    from spectral_diffusion.training.setup import build_module

    with pytest.raises(ConfigError, match="teacher=checkpoint"):
        build_module(train_cfg("loss=spectral_distill"))


def test_teacher_is_outside_optimizer_state_dict_and_ema_copy(train_cfg, tmp_path: Path) -> None:
    from spectral_diffusion.training.setup import build_module

    teacher_dir = save_diffusers_teacher(tmp_path / "teacher")
    module = build_module(train_cfg("loss=spectral_distill", "teacher=diffusers", f"teacher.path={teacher_dir}"))
    teacher = module.teacher
    optimizer = module.configure_optimizers()["optimizer"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized.isdisjoint(id(p) for p in teacher.parameters())
    assert {id(p) for p in module.loss.adapters.parameters()} <= optimized
    assert not any("teacher" in k for k in module.state_dict())
    # The EMA callback deep-copies the LightningModule: the frozen teacher is shared, not duplicated.
    assert copy.deepcopy(module).teacher is teacher
    # Device/dtype moves reach the teacher although it is not a submodule.
    module.to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    module.train()
    assert not teacher.training  # Lightning's model.train() does not wake the teacher


def test_checkpoint_teacher_refuses_foreign_targets(tmp_path: Path) -> None:
    config = {"model": {"_target_": "os.system", "command": "true"}}
    torch.save({"state_dict": {}, "spectral_diffusion": {"config": config, "diffusion": {}}}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match=r"(?s)refusing to load .*x.ckpt.*model._target_ names 'os.system'"):
        checkpoint_teacher(str(tmp_path / "x.ckpt"))
