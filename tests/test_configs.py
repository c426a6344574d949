"""Every config composes and instantiates; every experiment runs one step on tiny data."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from spectral_diffusion.training.build import build_module
from train import instantiate_collection, train

from .conftest import CONFIG_DIR, compose_config


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


@pytest.mark.parametrize(
    "group,option",
    [
        (g, o)
        for g in ("diffusion", "sampler", "loss", "data", "module", "trainer", "logger", "callbacks")
        for o in options(g)
    ],
)
def test_every_group_option_composes_and_instantiates(group, option, tmp_path, fmnist_root):
    overrides = [f"{group}={option}", f"data.root={fmnist_root}"] if group != "data" else [f"{group}={option}"]
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


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_runs_a_step(experiment, train_cfg):
    cfg = train_cfg(
        f"experiment={experiment}",
        "trainer.max_steps=1",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "data.num_workers=0",
        "run_name=exp",
    )
    assert cfg.trainer.max_steps == 1
    train(cfg)
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("debug", options("debug"))
def test_every_debug_preset_composes(debug, tmp_path):
    cfg = compose_config("train", tmp_path, [f"debug={debug}"])
    assert OmegaConf.to_yaml(cfg, resolve=True)


def test_evaluate_config_composes(tmp_path):
    cfg = compose_config("evaluate", tmp_path, ["model=fmnist_small"])
    assert cfg.model.in_channels == 1
