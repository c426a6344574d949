"""Every config composes and instantiates; every experiment runs one step on tiny data."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from evaluate import evaluate
from spectral_diffusion.assembly import load_run
from spectral_diffusion.assembly.first_stages import framework_autoencoder
from spectral_diffusion.training.setup import build_module
from train import instantiate_collection, train

from .conftest import CONFIG_DIR, compose_config
from .test_distillation import save_diffusers_teacher


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def test_default_config_is_the_quickstart(tmp_path):
    cfg = compose_config("train", tmp_path)
    assert cfg.data._target_.endswith("FashionMNISTDataModule") and cfg.data.pad_to == 32
    assert cfg.model.in_channels == 1 and cfg.model.image_size == 32
    assert cfg.trainer.max_steps > 0


@pytest.mark.parametrize("preset", options("model"))
def test_every_model_preset_instantiates(preset, tmp_path):
    cfg = compose_config("train", tmp_path, [f"model={preset}"])
    net = hydra.utils.instantiate(cfg.model)
    assert net.image_size == cfg.model.image_size


#: Options that need more than data.root to build: a teacher, or the autoencoder module and network.
AUTOENCODER_RUN = ["module=autoencoder", "model=autoencoder/fmnist_kl_f4", "loss=autoencoder"]
DISTILLATION_LOSSES = {"spectral_distill", "distill_output", "distill_features"}


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A tiny diffusers DDPM (unet/ + scheduler/) that fits the 1x32x32 Fashion-MNIST models."""
    return save_diffusers_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g in ("diffusion", "sampler", "loss", "data", "module", "trainer", "logger", "callbacks")
        for o in options(g)
    ],
)
def test_every_group_option_composes_and_instantiates(group, option, tmp_path, fmnist_root, tiny_teacher):
    # data.root is given for every option: none of the image DataModule constructors reads the disk.
    overrides = [f"{group}={option}", f"data.root={fmnist_root}"]
    if (group, option) == ("data", "latents"):  # a latent store is opened at once: an empty one is refused
        cfg = compose_config("train", tmp_path, [f"{group}={option}", f"data.path={tmp_path}"])
        # Hydra wraps the LatentStoreError; the message names the missing file and the command.
        with pytest.raises(Exception, match=r"meta.json is missing.*encode_latents"):
            hydra.utils.instantiate(cfg.data)
        return
    if (group, option) == ("data", "streaming"):  # the shard index is read at once: an empty folder is refused
        cfg = compose_config("train", tmp_path, [f"{group}={option}", f"data.input_dir={tmp_path}"])
        with pytest.raises(Exception, match=r"holds no LitData index.*write_shards.py"):
            hydra.utils.instantiate(cfg.data)
        return
    if (group, option) == ("data", "fashion_mnist_text"):  # the caption table is read at once: a tiny stand-in
        from .test_conditioning import write_class_embeddings

        overrides.append(f"data.embeddings={write_class_embeddings(tmp_path / 'text.pt', dim=24)}")
    if group == "loss" and option in DISTILLATION_LOSSES:
        overrides += ["teacher=diffusers", f"teacher.path={tiny_teacher}", "diffusion=ddpm_linear"]
    if (group, option) in (("loss", "autoencoder"), ("module", "autoencoder")):
        overrides = AUTOENCODER_RUN + [f"data.root={fmnist_root}"]
    cfg = compose_config("train", tmp_path, overrides)
    if group in ("diffusion", "sampler", "loss", "module"):
        build_module(cfg)
    elif group == "data":
        hydra.utils.instantiate(cfg.data)
    elif group == "trainer":
        if option in ("gpu", "ddp"):
            pytest.skip("GPU/multi-process trainer configs are instantiated only where CUDA is present")
        hydra.utils.instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    else:
        instantiate_collection(cfg.get(group))


#: Experiments that run offline on the Fashion-MNIST fixture; the others need their data and teacher.
OFFLINE_EXPERIMENTS = [e for e in options("experiment") if e.startswith("fmnist_")]


@pytest.mark.parametrize("experiment", OFFLINE_EXPERIMENTS)
def test_every_offline_experiment_runs_a_step(experiment, train_cfg, tiny_teacher, tmp_path):
    extra = []
    if experiment == "fmnist_sd_distill":  # its teacher is the fmnist_teacher run; here a tiny stand-in
        extra = ["teacher=diffusers", f"teacher.path={tiny_teacher}"]
    if experiment == "fmnist_text":  # CLIP needs the network once; random embeddings stand in for its output
        from .test_conditioning import write_class_embeddings

        extra = [f"data.embeddings={write_class_embeddings(tmp_path / 'text.pt', dim=24)}", "model.context_dim=24"]
    cfg = train_cfg(
        f"experiment={experiment}",
        "trainer.max_steps=1",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "data.num_workers=0",
        "run_name=exp",
        *extra,
    )
    assert cfg.trainer.max_steps == 1
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    # The checkpoint loads through the checked loader, with no flag, and evaluates.
    if experiment == "fmnist_autoencoder":
        stage = framework_autoencoder(str(ckpt))
        assert stage.decode(stage.encode(torch.zeros(1, 1, 32, 32))).shape == (1, 1, 32, 32)
        return
    assert load_run(ckpt).global_step == 1
    evaluated = evaluate(
        compose_config("evaluate", tmp_path / "eval", [f"ckpt_path={ckpt}", "metrics=[macs]", "grid_samples=0"])
    )
    assert evaluated["gmacs"] > 0 and evaluated["weights"] == "ema"


def test_fmnist_sd_distill_finds_the_fmnist_teacher_run(tmp_path):
    cfg = compose_config("train", tmp_path, ["experiment=fmnist_sd_distill"])
    assert cfg.teacher.ckpt_path.endswith("logs/train/fmnist_teacher/checkpoints/last.ckpt")
    teacher = compose_config("train", tmp_path, ["experiment=fmnist_teacher"])
    assert teacher.run_name == "fmnist_teacher" and teacher.diffusion == cfg.diffusion


#: What the real-data distillation experiments must agree with: the published teachers' shapes and
#: schedules (unet/config.json and scheduler/scheduler_config.json of the hub repositories).
HUB_TEACHERS = {
    "cifar10_sd_distill": ("google/ddpm-cifar10-32", (3, 32, 32), ("linear", 1e-4, 0.02)),
    "celebahq256_sd_distill": ("CompVis/ldm-celebahq-256", (3, 64, 64), ("scaled_linear", 0.0015, 0.0195)),
}


@pytest.mark.parametrize("experiment", sorted(set(options("experiment")) - set(OFFLINE_EXPERIMENTS)))
def test_real_data_experiments_compose_with_matching_shapes(experiment, tmp_path):
    cfg = compose_config("train", tmp_path, [f"experiment={experiment}", "data.root=/data"])
    datamodule = hydra.utils.instantiate(cfg.data)
    net = hydra.utils.instantiate(cfg.model)
    # Latent down-sampling factor of each family's first stage: VQ-f4 (CelebA-HQ), KL-f8 (churches).
    factor = 4 if experiment.startswith("celebahq256") else 8 if experiment.startswith("lsun_church256") else 1
    channels, size = datamodule.image_shape[0], datamodule.image_shape[1] // factor
    assert net.image_size == size, f"{experiment}: data {datamodule.image_shape} / f{factor} vs model {net.image_size}"
    if experiment in HUB_TEACHERS:
        hub_id, shape, (schedule, beta_start, beta_end) = HUB_TEACHERS[experiment]
        assert cfg.teacher.path == hub_id
        assert (net.in_channels, net.image_size, net.image_size) == shape
        assert (cfg.diffusion.schedule, cfg.diffusion.beta_start, cfg.diffusion.beta_end) == (
            schedule,
            beta_start,
            beta_end,
        )
    elif "church" in experiment:
        assert (net.in_channels, net.image_size) == (4, 32) and channels == 3
        assert cfg.diffusion.beta_end == 0.0155  # the LDM-8 churches schedule


@pytest.mark.parametrize("debug", options("debug"))
def test_every_debug_preset_composes(debug, tmp_path):
    cfg = compose_config("train", tmp_path, [f"debug={debug}"])
    assert OmegaConf.to_yaml(cfg, resolve=True)


def test_evaluate_config_composes(tmp_path):
    cfg = compose_config("evaluate", tmp_path, ["model=fmnist_small"])
    assert cfg.model.in_channels == 1
