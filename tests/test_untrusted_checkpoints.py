"""Checkpoints and model folders are untrusted input: crafted ones are refused by every entry point, with no side effect.

A real checkpoint is written once by ``train.py``; the tests then edit its stored config as an
attacker would (nested targets at several depths, in lists, in every group the loaders read) and
hand it to each place that loads checkpoints. A canary file must keep its contents, no pickle
payload may run, and the error must name the checkpoint, the key path and the target.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from evaluate import evaluate
from spectral_diffusion.assembly import load_run
from spectral_diffusion.assembly.first_stages import framework_autoencoder
from spectral_diffusion.assembly.teachers import checkpoint_teacher, diffusers_teacher
from spectral_diffusion.utils.checkpoint import METADATA_KEY
from spectral_diffusion.utils.diffusers_files import DiffusersFolderError
from spectral_diffusion.utils.stored_config import StoredConfigError, check_stored_config, stored_config_problems
from train import train

from .conftest import compose_config

CANARY_TEXT = "the user's data"


class _Payload:
    """Unpickling this writes ``path``: the proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "a pickle payload ran"))


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory, fmnist_root) -> Path:
    """A genuine 2-step checkpoint of the tiny quickstart."""
    root = tmp_path_factory.mktemp("real")
    overrides = [
        "debug=tiny",
        f"data.root={fmnist_root}",
        "data.download=false",
        "callbacks.progress=null",
        "logger=none",
        "trainer.max_steps=2",
    ]
    cfg = compose_config("train", root, overrides)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


@pytest.fixture
def traps(tmp_path) -> dict[str, Path]:
    """A canary holding the user's data, a pickle payload, and the files the payloads would create."""
    canary = tmp_path / "canary.txt"
    canary.write_text(CANARY_TEXT)
    payload = tmp_path / "payload.pt"
    with payload.open("wb") as f:
        pickle.dump(_Payload(tmp_path / "pickle_ran.txt"), f)
    return {
        "canary": canary,
        "payload": payload,
        "pickle_ran": tmp_path / "pickle_ran.txt",
        "touched": tmp_path / "touched",
    }


def open_canary(traps):
    return {"_target_": "builtins.open", "_args_": [str(traps["canary"]), "w"]}


def torch_load_payload(traps):
    return {"_target_": "torch.load", "f": str(traps["payload"]), "weights_only": False}


#: name -> (key path that must be named, target that must be named, edit of the stored config)
CRAFTS = {
    "open_nested_in_model": (
        "model.extra._target_",
        "builtins.open",
        lambda c, t: c["model"].__setitem__("extra", open_canary(t)),
    ),
    "torch_load_deep_in_diffusion": (
        "diffusion.a.b._target_",
        "torch.load",
        lambda c, t: c["diffusion"].__setitem__("a", {"b": torch_load_payload(t)}),
    ),
    "subprocess_as_autoencoder": (
        "autoencoder._target_",
        "subprocess.run",
        lambda c, t: c.__setitem__("autoencoder", {"_target_": "subprocess.run", "args": ["touch", str(t["touched"])]}),
    ),
    "import_module_in_a_sampler_list": (
        "sampler.hooks[1]._target_",
        "importlib.import_module",
        lambda c, t: c["sampler"].__setitem__("hooks", [1, {"_target_": "importlib.import_module", "name": "os"}]),
    ),
    "getattr_chain_in_data": (
        "data.root._target_",
        "builtins.getattr",
        lambda c, t: c["data"].__setitem__(
            "root",
            {
                "_target_": "builtins.getattr",
                "_args_": [{"_target_": "importlib.import_module", "name": "os"}, "system"],
            },
        ),
    ),
    "the_model_itself_replaced": (
        "model._target_",
        "torch.load",
        lambda c, t: c.__setitem__("model", torch_load_payload(t)),
    ),
}


def craft(real: Path, out: Path, edit, traps) -> Path:
    checkpoint = torch.load(real, weights_only=True)
    config = copy.deepcopy(checkpoint[METADATA_KEY]["config"])
    edit(config, traps)
    checkpoint[METADATA_KEY]["config"] = config
    torch.save(checkpoint, out)
    return out


def assert_nothing_happened(traps):
    assert traps["canary"].read_text() == CANARY_TEXT
    assert not traps["pickle_ran"].exists()
    assert not traps["touched"].exists()


def evaluate_entry(path: Path, tmp_path: Path, fmnist_root: Path) -> None:
    evaluate(compose_config("evaluate", tmp_path / "eval", [f"ckpt_path={path}", "metrics=[macs]", "grid_samples=0"]))


def inpaint_entry(path: Path, tmp_path: Path, fmnist_root: Path) -> None:
    from .test_inpainting import load_script

    load_script().run_inpaint(
        compose_config("inpaint", tmp_path / "inpaint", [f"ckpt_path={path}", f"image={tmp_path}/x.png"])
    )


def resume_entry(path: Path, tmp_path: Path, fmnist_root: Path) -> None:
    """A downloaded run dropped into logs/, then "resumed" by re-running its command."""
    overrides = ["debug=tiny", f"data.root={fmnist_root}", "callbacks.progress=null", "logger=none"]
    cfg = compose_config("train", tmp_path / "resume", overrides)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(path, ckpt_dir / "last.ckpt")
    train(cfg)


ENTRY_POINTS = {
    "load_run": lambda path, tmp, data: load_run(path),
    "evaluate.py": evaluate_entry,
    "scripts/inpaint.py": inpaint_entry,
    "teacher=checkpoint": lambda path, tmp, data: checkpoint_teacher(str(path)),
    "autoencoder=framework": lambda path, tmp, data: framework_autoencoder(str(path)),
    "resume": resume_entry,
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("name", list(CRAFTS))
def test_crafted_checkpoint_is_refused_with_no_side_effect(name, entry, real_checkpoint, traps, tmp_path, fmnist_root):
    key, target, edit = CRAFTS[name]
    crafted = craft(real_checkpoint, tmp_path / f"{name}.ckpt", edit, traps)
    with pytest.raises(StoredConfigError) as err:
        ENTRY_POINTS[entry](crafted, tmp_path, fmnist_root)
    message = str(err.value)
    loaded = "last.ckpt" if entry == "resume" else crafted.name  # resume reads the run's own copy
    assert loaded in message and key in message and repr(target) in message, message
    assert "refusing" in message and "nothing has been built" in message
    assert_nothing_happened(traps)


def test_every_depth_and_key_kind_is_reported():
    config = {
        "model": {"_target_": "spectral_diffusion.networks.UNet", "_partial_": True, "size": "${oc.env:HOME}"},
        "trainer": {"plugins": [{"_target_": "os.system", "_call_": True}]},
        "module": {"optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True}},  # the one expected _partial_
    }
    problems = stored_config_problems(config)
    assert problems == [
        "model._partial_ is only expected under module.optimizer",
        "model.size: holds the interpolation '${oc.env:HOME}'; stored configs are resolved when written",
        "trainer.plugins[0]._target_ names 'os.system', which a checkpoint may not ask to build",
        "trainer.plugins[0]._call_ is not a key this framework stores",
    ]


def test_a_genuine_checkpoint_passes_and_loads(real_checkpoint):
    stored = torch.load(real_checkpoint, weights_only=True)[METADATA_KEY]["config"]
    check_stored_config(stored, "real")  # trainer, callbacks, logger, optimizer and all
    bundle = load_run(real_checkpoint)
    assert bundle.weights == "ema" and bundle.global_step == 2 and bundle.shape == (1, 32, 32)
    assert bundle.diffusion.prediction_type == "v" and bundle.config["model"]["base_channels"] == 8


def test_an_allowed_name_in_the_wrong_group_is_not_built(real_checkpoint, tmp_path, traps):
    """``data`` naming the CSV logger (an allowed name): the registry builds only data modules from ``data``."""
    logs = tmp_path / "logger_dir"
    edit = lambda c, t: c.__setitem__(  # noqa: E731
        "data", {"_target_": "spectral_diffusion.training.loggers.ContinuingCSVLogger", "save_dir": str(logs)}
    )
    crafted = craft(real_checkpoint, tmp_path / "wrong_group.ckpt", edit, traps)
    cfg = compose_config(
        "evaluate",
        tmp_path / "eval",
        [f"ckpt_path={crafted}", "metrics=[fid]", "metrics.fid.feature_extractor=fmnist_classifier"],
    )
    with pytest.raises(
        StoredConfigError,
        match=r"data._target_='spectral_diffusion.training.loggers.ContinuingCSVLogger' is not a data",
    ):
        evaluate(cfg)
    assert not logs.exists()


# -- diffusers folders ------------------------------------------------------------------------------
def test_diffusers_folder_with_a_pickle_payload_is_refused(tmp_path, traps):
    from .test_distillation import save_diffusers_teacher

    folder = save_diffusers_teacher(tmp_path / "teacher")
    unet = folder / "unet" if (folder / "unet").is_dir() else folder
    for weights in unet.glob("diffusion_pytorch_model*"):
        weights.unlink()
    shutil.copy(traps["payload"], unet / "diffusion_pytorch_model.bin")
    with pytest.raises(Exception, match=r"refusing .*diffusion_pytorch_model.bin.*weights_only=True") as err:
        diffusers_teacher(str(folder))
    assert isinstance(err.value.__cause__, DiffusersFolderError) or isinstance(err.value, DiffusersFolderError)
    assert_nothing_happened(traps)


def test_diffusers_folder_asking_for_custom_code_is_refused(tmp_path, traps):
    from .test_distillation import save_diffusers_teacher

    folder = save_diffusers_teacher(tmp_path / "teacher")
    unet = folder / "unet" if (folder / "unet").is_dir() else folder
    config = json.loads((unet / "config.json").read_text())
    config["auto_map"] = {"UNet2DModel": "evil.EvilUNet"}
    (unet / "config.json").write_text(json.dumps(config))
    (unet / "evil.py").write_text(f"open({str(traps['canary'])!r}, 'w')\n")
    with pytest.raises(Exception, match=r"asks for custom code \(auto_map\)"):
        diffusers_teacher(str(folder))
    config.pop("auto_map")
    config["_class_name"] = "EvilUNet"  # a class the folder would bring along
    (unet / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match=r"holds a EvilUNet; supported are \['UNet2DModel', 'SpectralUNet2DModel'\]"):
        diffusers_teacher(str(folder))
    assert_nothing_happened(traps)


def test_diffusers_teacher_prefers_safetensors_and_reads_pickles_safely(tmp_path):
    from .test_distillation import save_diffusers_teacher

    folder = save_diffusers_teacher(tmp_path / "teacher")
    unet = folder / "unet" if (folder / "unet").is_dir() else folder
    assert (unet / "diffusion_pytorch_model.safetensors").is_file()  # save_pretrained's default
    reference = diffusers_teacher(str(folder))
    # The same weights as a plain (tensors-only) pickle load as well, through weights_only=True.
    state = {k: v.clone() for k, v in reference.net.unet.state_dict().items()}
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, unet / "diffusion_pytorch_model.bin")
    again = diffusers_teacher(str(folder))
    x, t = torch.randn(2, *reference.input_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([5, 500])
    assert torch.equal(reference(x, t), again(x, t))
