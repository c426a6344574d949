"""Every experiment composes with every option a user would switch to, and the switched part builds.

``python train.py experiment=E GROUP=OPTION`` must give OPTION's node as OPTION defines it: an
experiment that writes a key into a group's node (``teacher.ckpt_path: ...``) would leave that key
behind when the group is switched (``teacher=diffusers`` then fails with an unexpected keyword
argument). Experiments therefore select named options (``override /teacher: fmnist_teacher``) and
only set keys that every option of the group has (``data.batch_size``, ``trainer.max_steps``).

For each experiment and each option of teacher / autoencoder / sampler / logger / trainer (and of
data, where the data's samples fit the experiment's model) the tests below compose the run config,
check that the experiment added no key to the switched node and removed none, and instantiate that
node on tiny offline fixtures. The teacher options also go through ``build_module``: the teacher
loads into the distillation loss where it fits, and is refused with both shapes named where not.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hydra
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from spectral_diffusion.assembly import ConfigError, build_diffusion, build_sampler, loss_needs_teacher
from spectral_diffusion.autoencoders import IdentityFirstStage
from spectral_diffusion.data.latents import write_latent_store
from spectral_diffusion.diffusion.samplers import Sampler
from spectral_diffusion.losses.distillation import SpectralDistillationLoss
from spectral_diffusion.teachers import TeacherMismatchError
from spectral_diffusion.training.setup import build_module
from train import instantiate_collection, train

from .conftest import compose_config
from .test_autoencoders import save_diffusers_autoencoders
from .test_conditioning import write_class_embeddings
from .test_configs import options
from .test_distillation import save_diffusers_teacher
from .test_latents import framework_checkpoint

EXPERIMENTS = options("experiment")
#: The experiments that run offline (Fashion-MNIST); the others need their data sets and hub models.
OFFLINE = [e for e in EXPERIMENTS if e.startswith("fmnist_")]
#: The one distillation experiment whose student (1x32x32, DDPM linear schedule) the tiny teachers fit.
FITS_TINY_TEACHERS = {"fmnist_sd_distill"}
#: A narrower network of the same shape (in_channels, image_size), for building the big real-data students:
#: what build_module checks against the teacher (shape, schedule, classes) does not depend on the width.
NARROW_NET = [
    "model.base_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[]",
    "model.head_channels=8",
]
#: How a teacher node is pointed at a fixture: the key that locates the teacher, and its kind, by loader.
TEACHER_LOCATORS = {
    "spectral_diffusion.assembly.teachers.checkpoint_teacher": ("ckpt_path", "checkpoint"),
    "spectral_diffusion.assembly.teachers.diffusers_teacher": ("path", "diffusers"),
}
#: The first stage of the latent-space families, from 3x256x256 images: (latent channels, down-sampling
#: factor). CelebA-HQ: the teacher's VQ-f4; LSUN-Churches: the KL-f8 autoencoder.
FIRST_STAGES = {"celebahq256": (3, 4), "lsun_church256": (4, 8)}
#: The data options whose samples fit each family's model. Left out, because the shapes cannot fit:
#: RGB data sets for the 1-channel Fashion-MNIST models; the 256x256 data sets (and Fashion-MNIST) for
#: the 3x32x32 CIFAR-10 models (image_folder/celebahq/lsun would need data.resolution=32, a choice
#: beyond switching the option); Fashion-MNIST and CIFAR-10 for the 256x256 latent-space families; and
#: cached latents for the pixel-space families, which no first stage encodes to their own shape; and
#: streaming shards, whose shape is that of the data they were written from (tests/test_streaming.py).
IMAGES_256 = ["celebahq", "celebahq256", "image_folder", "lsun", "lsun_church256"]
DATA_FITS = {
    "fmnist_": ["fashion_mnist", "fashion_mnist_text"],
    "cifar10_": ["cifar10"],
    "celebahq256_": [*IMAGES_256, "latents"],
    "lsun_church256_": [*IMAGES_256, "latents"],
}


def family(experiment: str, table: dict[str, Any]) -> Any:
    return next(value for prefix, value in table.items() if experiment.startswith(prefix))


def model_shape(cfg: DictConfig) -> tuple[int, int, int]:
    return (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)


#: Config targets that are factories, and the class each returns.
FACTORY_CLASSES = {"spectral_diffusion.assembly.first_stages.framework_autoencoder": "FrameworkAutoencoder"}


def target_name(node: DictConfig) -> str:
    """The class name that instantiating ``node`` gives."""
    return FACTORY_CLASSES.get(node._target_, node._target_.rsplit(".", 1)[-1])


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread (as in test_autoencoders.py). On a busy machine two threads
    spin-wait on each other: building the fmnist_sd_distill module took 3.5 s with two, 0.16 s with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory, fmnist_root: Path) -> dict[str, Path]:
    """Tiny offline stand-ins for everything a ``???`` (or a hub id) points at."""
    root = tmp_path_factory.mktemp("matrix")
    # A checkpoint teacher as train.py writes it: one step of a tiny Fashion-MNIST run (1x32x32, linear).
    teacher_run = [
        "debug=tiny",
        f"data.root={fmnist_root}",
        "data.download=false",
        "logger=none",
        "callbacks=[model_checkpoint]",  # last.ckpt is all a teacher needs
        "trainer.max_steps=1",
        "trainer.limit_val_batches=0",
        "run_name=teacher",
    ]
    cfg = compose_config("train", root / "teacher_run", teacher_run)
    train(cfg)
    latent_stores = {}
    for channels, size in ((3, 64), (4, 32)):  # the latent shapes of the CelebA-HQ and LSUN-Churches families
        images = [torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1]
        path = root / f"latents_{channels}x{size}x{size}"
        latent_stores[path.name] = write_latent_store(path, IdentityFirstStage(channels), images, num_samples=4)
    return {
        "fmnist_root": fmnist_root,
        "teacher_ckpt": Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
        "diffusers_teacher": save_diffusers_teacher(root / "diffusers_teacher"),  # unet/ + scheduler/, 1x32x32
        "framework_ae": framework_checkpoint(root / "ae.ckpt"),  # 1x32x32 -> 4x8x8
        "diffusers_ae": save_diffusers_autoencoders(root / "diffusers_ae"),  # vae/ and vqvae/, 3-channel
        "embeddings": write_class_embeddings(root / "captions.pt", dim=24),
        **latent_stores,
    }


# -- composing ------------------------------------------------------------------------------------
def flat_keys(node: Any, prefix: str = "") -> set[str]:
    """The key paths of a config node (lists are leaves), without resolving interpolations."""
    if not isinstance(node, DictConfig):
        return set()
    keys = set()
    for key in node.keys():
        keys.add(prefix + str(key))
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            keys |= flat_keys(child, f"{prefix}{key}.")
    return keys


_plain_keys: dict[tuple[tuple[str, str], ...], dict[str, set[str]]] = {}
_experiment_cfgs: dict[str, DictConfig] = {}


def compose_experiment(experiment: str, tmp_path: Path) -> DictConfig:
    """``experiment=E`` as it is, composed once per experiment."""
    if experiment not in _experiment_cfgs:
        _experiment_cfgs[experiment] = compose_config("train", tmp_path / "experiment", [f"experiment={experiment}"])
    return _experiment_cfgs[experiment]


def compose_switched(experiment: str, switches: dict[str, str], tmp_path: Path, *extra: str) -> DictConfig:
    """``experiment=E GROUP=OPTION ...``, checked to hold each OPTION's node with exactly OPTION's keys.

    The experiment may change values that every option has (data.batch_size, trainer.max_steps), but
    never add a key that OPTION lacks (one left over from the experiment's own option) or drop one.
    """
    chosen = [f"{group}={option}" for group, option in switches.items()]
    row = tuple(switches.items())
    if row not in _plain_keys:  # the options on their own, without an experiment
        plain = compose_config("train", tmp_path / "plain", [*chosen, *extra])
        _plain_keys[row] = {group: flat_keys(plain.get(group)) for group in switches}
    cfg = compose_config("train", tmp_path, [f"experiment={experiment}", *chosen, *extra])
    for group, option in switches.items():
        assert flat_keys(cfg.get(group)) == _plain_keys[row][group], (
            f"experiment={experiment} {group}={option}: the {group} node's keys differ from {group}={option}'s own"
        )
    return cfg


# -- teacher --------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", options("teacher"))
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_teacher_option(experiment, option, fixtures, tmp_path):
    cfg = compose_switched(experiment, {"teacher": option}, tmp_path, *([] if experiment in OFFLINE else NARROW_NET))
    node = cfg.get("teacher")
    teacher = None
    if node:  # teacher=none composes to an empty node: no teacher
        key, kind = TEACHER_LOCATORS[node._target_]
        node[key] = str(fixtures["teacher_ckpt" if kind == "checkpoint" else "diffusers_teacher"])
        teacher = hydra.utils.instantiate(node)
        assert teacher.source.startswith(f"{kind}:") and teacher.input_shape == (1, 32, 32)
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    distils = loss_needs_teacher(cfg.loss)
    if not distils and experiment not in OFFLINE:
        return  # the teacher is unused, and building a real-data run needs its data and first stage
    if distils and teacher is None:
        with pytest.raises(ConfigError, match=r"distils from a teacher.*teacher=checkpoint.*loss=denoising"):
            build_module(cfg)
    elif distils and experiment not in FITS_TINY_TEACHERS:
        student = re.escape(str(model_shape(cfg)))
        with pytest.raises(TeacherMismatchError, match=rf"teacher \({kind}:.*denoises \(1, 32, 32\).*takes {student}"):
            build_module(cfg)
    elif distils:
        module = build_module(cfg)
        # The teacher really is the distillation loss's, frozen and outside the student's state.
        assert isinstance(module.loss, SpectralDistillationLoss)
        assert module.teacher is module.loss.teacher and module.teacher.source == teacher.source
        assert len(module.loss.adapters) > 0 and not any("teacher" in k for k in module.state_dict())
    else:
        module = build_module(cfg)  # a denoising (or autoencoder) run: a configured teacher is not loaded
        assert getattr(module, "teacher", None) is None


def test_no_teacher_spellings_agree(tmp_path):
    """``teacher=none`` and ``~teacher`` both drop an experiment's teacher (``teacher=null`` is no override)."""
    for drop in ("teacher=none", "~teacher"):
        cfg = compose_config("train", tmp_path, ["experiment=fmnist_sd_distill", drop, "loss=denoising"])
        assert not cfg.get("teacher")
        assert build_module(cfg).teacher is None


# -- autoencoder, sampler, logger, trainer ------------------------------------------------------
#: Groups whose nodes experiments must leave as the options define them, and which do not depend on one
#: another: one composition switches all four. Row j takes option j of each group (cycling), so that
#: over the rows every option of every group meets every experiment; a failure names its group.
PLUMBING = ("autoencoder", "sampler", "logger", "trainer")
ROWS = [
    {group: options(group)[j % len(options(group))] for group in PLUMBING}
    for j in range(max(len(options(group)) for group in PLUMBING))
]
AUTOENCODER_FIXTURES = {
    "identity": lambda f: [],
    "framework": lambda f: [f"autoencoder.ckpt_path={f['framework_ae']}"],
    "diffusers": lambda f: [f"autoencoder.path={f['diffusers_ae']}", "autoencoder.subfolder=vae"],
}
#: The fixtures' latent spaces: an image shape and its latent shape (framework f4, diffusers KL f2).
FIXTURE_LATENTS = {"framework": ((1, 32, 32), (4, 8, 8)), "diffusers": ((3, 16, 16), (4, 8, 8))}


def check_autoencoder(cfg: DictConfig, option: str) -> None:
    stage = hydra.utils.instantiate(cfg.autoencoder)
    assert type(stage).__name__ == target_name(cfg.autoencoder)
    assert not any(p.requires_grad for p in stage.parameters())
    if option == "identity":  # pixel space: as many channels as the experiment's model takes
        assert stage.image_channels == cfg.model.in_channels
    else:
        image, latent = FIXTURE_LATENTS[option]
        assert stage.latent_shape(image) == latent


def check_sampler(cfg: DictConfig) -> None:
    diffusion = build_diffusion(cfg.diffusion)
    sampler = build_sampler(cfg.sampler, diffusion)  # as build_module passes the experiment's process in
    assert isinstance(sampler, Sampler) and type(sampler).__name__ == target_name(cfg.sampler)
    assert sampler.diffusion is diffusion


def check_logger(cfg: DictConfig, option: str) -> None:
    loggers = instantiate_collection(cfg.get("logger"))
    assert [type(logger).__name__ for logger in loggers] == [target_name(c) for c in (cfg.get("logger") or {}).values()]
    assert (option == "none") == (not loggers)
    for logger in loggers:  # every logger writes into the experiment's run directory
        assert Path(logger.save_dir) == Path(cfg.paths.output_dir)


def check_trainer(cfg: DictConfig, max_steps: int) -> None:
    assert cfg.trainer.max_steps == max_steps  # the experiment's schedule survives the switch
    needs_gpus = cfg.trainer.accelerator == "gpu" or cfg.trainer.get("strategy") == "ddp"
    if needs_gpus and torch.cuda.device_count() < cfg.trainer.devices * cfg.trainer.get("num_nodes", 1):
        # GPU and DDP trainers are only composed (and resolved) here: they are instantiated where the GPUs are.
        assert OmegaConf.to_container(cfg.trainer, resolve=True)["devices"] >= 1
        return
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.max_steps == cfg.trainer.max_steps
    assert Path(trainer.default_root_dir) == Path(cfg.paths.output_dir)


@pytest.mark.parametrize("switches", ROWS, ids=lambda row: ",".join(f"{g}={o}" for g, o in row.items()))
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_autoencoder_sampler_logger_trainer_options(experiment, switches, fixtures, tmp_path):
    max_steps = compose_experiment(experiment, tmp_path).trainer.max_steps
    cfg = compose_switched(experiment, switches, tmp_path, *AUTOENCODER_FIXTURES[switches["autoencoder"]](fixtures))
    check_autoencoder(cfg, switches["autoencoder"])
    check_sampler(cfg)
    check_logger(cfg, switches["logger"])
    check_trainer(cfg, max_steps)


def test_rows_cover_every_option():
    for group in PLUMBING:
        assert {row[group] for row in ROWS} == set(options(group))


# -- data -----------------------------------------------------------------------------------------
def data_fixtures(option: str, experiment: str, f: dict[str, Path]) -> list[str]:
    if option == "latents":
        channels, factor = family(experiment, FIRST_STAGES)
        return [f"data.path={f[f'latents_{channels}x{256 // factor}x{256 // factor}']}"]
    if option == "fashion_mnist_text":
        return [f"data.root={f['fmnist_root']}", f"data.embeddings={f['embeddings']}"]
    if option == "fashion_mnist":
        return [f"data.root={f['fmnist_root']}"]
    # The image DataModules do not read data.root until setup(): a path that does not exist instantiates.
    return [f"data.root={f['fmnist_root'] / 'not_read'}"]


@pytest.mark.parametrize(
    "experiment,option", [(e, o) for e in EXPERIMENTS for o in options("data") if o in family(e, DATA_FITS)]
)
def test_data_option(experiment, option, fixtures, tmp_path):
    cfg = compose_switched(experiment, {"data": option}, tmp_path, *data_fixtures(option, experiment, fixtures))
    datamodule = hydra.utils.instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size  # the experiment's batch size survives the switch
    shape = tuple(datamodule.image_shape)
    if not getattr(datamodule, "provides_latents", False) and experiment.startswith(tuple(FIRST_STAGES)):
        channels, factor = family(experiment, FIRST_STAGES)
        shape = (channels, shape[1] // factor, shape[2] // factor)
    assert shape == model_shape(cfg), (
        f"data={option} gives {shape}; experiment={experiment}'s model takes {model_shape(cfg)}"
    )
