"""Every command in README.md, run here as a cheap variant of exactly itself, or listed with the reason it cannot.

``test_every_readme_command_is_accounted_for`` extracts the commands from README.md (each line of
each ```bash block, with ``\\`` continuations joined, comments dropped and ``&&`` chains split, and
each inline code span that starts with ``python `` or ``.venv/bin/python ``) and requires each to be
a key of :data:`RUNS` (the test that runs it) or of :data:`CANNOT_RUN` (why not, and what is checked
instead). A README command added without a test fails it; so does a table entry the README lost.

Each runner test parses the README's own text (:func:`readme_args`), replaces its placeholders
(``DIR``, ``PATH``, ``<run_name>``, ...) by fixtures and

1. composes the entry config exactly as written and checks that every override landed
   (:func:`check_as_written`: values by key, group options by ``hydra.runtime.choices``);
2. appends only overrides that make it cheap (tiny networks, a few steps and samples, the tiny data
   fixtures, no progress bar; :func:`cheapened`), never ones that change what the command is about,
   and calls the script's real entry function (``train``, ``evaluate``, ``encode_latents``, ...) on it.

Commands that build on earlier ones (the quickstart and the evaluations of its checkpoint; the
autoencoder, its latents and the latent run; the Fashion-MNIST teacher, its student and their
evaluation; a sweep and its Pareto plot) run in README order in one working directory, where
the README's relative paths (``logs/train/quickstart/checkpoints/last.ckpt``) resolve as they do
for a user (:func:`tests.conftest.compose_in_workdir`).

The ``debug=`` presets (``configs/debug/``) each run in a test here too (:data:`DEBUG_TESTS`).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from evaluate import evaluate
from spectral_diffusion.assembly import load_run
from train import train

from . import test_data_formats
from .conftest import CHEAP_METRIC_OVERRIDES, CONFIG_DIR, compose_config, compose_in_workdir, slurm_stand_ins
from .test_distillation import save_diffusers_teacher

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# The data sets in their real on-disk formats, as tests/test_data_formats.py writes them (session fixtures).
cifar_root = test_data_formats.cifar_root  # cifar-10-batches-py/: 20 training and 6 test images
celeba_root = test_data_formats.celeba_root  # celebahq/data256x256/*.jpg and data256x256.zip: 10 images
lsun_images = test_data_formats.lsun_images
lsun_root = test_data_formats.lsun_root  # church_outdoor_{train,val}_lmdb: 7 and 3 images


# == the README's commands ========================================================================
def readme_commands(text: str | None = None) -> list[str]:
    """The README's commands in order, without duplicates, ``.venv/bin/python`` spelled ``python``."""
    text = README.read_text() if text is None else text
    fence = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
    found: list[str] = []
    for block in fence.finditer(text):
        if block.group(1) != "bash":
            continue
        for line in re.sub(r"\\\n\s*", " ", block.group(2)).splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)  # a comment, whole-line or trailing
            found += [part for part in (" ".join(p.split()) for p in line.split("&&")) if part]
    prose = fence.sub("", text)
    for span in re.finditer(r"`([^`]+)`", prose):  # inline code may wrap over lines
        words = " ".join(span.group(1).split())
        if words.startswith(("python ", ".venv/bin/python ")):
            found.append(words)
    normalised = [re.sub(r"^\.venv/bin/python ", "python ", c) for c in found]
    return list(dict.fromkeys(normalised))


# Commands, by the README's own text (the tables below are keyed by it).
QUICKSTART = "python train.py"
OVERRIDES = "python train.py trainer.max_steps=200 data.batch_size=32"
BASE_GPU = "python train.py experiment=fmnist_base_gpu"
TENSORBOARD_BF16 = "python train.py logger=tensorboard trainer.precision=bf16-mixed"
DRY_RUN = "python train.py dry_run=true"
FDR = "python train.py debug=fdr"
AUTOENCODER = "python train.py experiment=fmnist_autoencoder"
ENCODE_LATENTS = (
    "python scripts/encode_latents.py data=fashion_mnist autoencoder=framework "
    "autoencoder.ckpt_path=logs/train/fmnist_autoencoder/checkpoints/last.ckpt output=data/fmnist_latents flips=true"
)
LATENT_RUN = (
    "python train.py data=latents data.path=data/fmnist_latents autoencoder=framework "
    "autoencoder.ckpt_path=logs/train/fmnist_autoencoder/checkpoints/last.ckpt model=fmnist_small "
    "model.in_channels=4 model.image_size=8 model.attention_resolutions=[4]"
)
WRITE_SHARDS = "python scripts/write_shards.py data=fashion_mnist output=data/shards/fmnist"
STREAMING_RUN = "python train.py data=streaming data.input_dir=data/shards/fmnist"
FMNIST_TEACHER = "python train.py experiment=fmnist_teacher"
FMNIST_DISTILL = "python train.py experiment=fmnist_sd_distill"
ABLATIONS = [
    "python train.py experiment=fmnist_sd_distill loss=denoising run_name=abl_none",
    "python train.py experiment=fmnist_sd_distill loss=distill_output run_name=abl_output",
    "python train.py experiment=fmnist_sd_distill loss=distill_features run_name=abl_features",
    "python train.py experiment=fmnist_sd_distill loss.alpha=0 run_name=abl_unweighted",
]
CIFAR10_DISTILL = "python train.py experiment=cifar10_sd_distill data.root=DIR"
CELEBAHQ_DISTILL = "python train.py experiment=celebahq256_sd_distill data.root=DIR_OR_ZIP"
CHURCH_DISTILL = "python train.py experiment=lsun_church256_sd_distill data.root=DIR teacher.ckpt_path=PATH"
DDP_16_GPUS = (
    "python train.py trainer=ddp trainer.devices=8 trainer.num_nodes=2 batch.global_size=2048 "
    "batch.per_device_max=64 trainer.precision=bf16-mixed tf32=true module.compile_network=true"
)
PIP_SLURM = 'pip install -e ".[slurm,sweeps]"'
SLURM = (
    "python train.py -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu trainer=ddp "
    "trainer.num_nodes=2 trainer.devices=8 ..."
)
OPTUNA = "python train.py -m experiment=fmnist_sd hparams_search=fmnist_sd_optuna"
GRID = "python train.py -m model.base_channels=24,32,48"
PARETO = "python scripts/pareto.py dirs=logs/train/multirun/<run_name>"
EVAL_ALL = "python evaluate.py ckpt_path=PATH metrics=[fid,kid,macs,params,throughput,spectral]"
EVAL_OFFLINE_FD = (
    'python evaluate.py ckpt_path=logs/train/quickstart/checkpoints/last.ckpt "metrics=[fid,macs,params,throughput]" '
    "metrics.fid.feature_extractor=fmnist_classifier num_samples=10000"
)
EVAL_REFERENCE = "python evaluate.py mode=reference data=celebahq data.root=DIR metrics=[fid]"
EVAL_PRESET = "python evaluate.py model=sd_celebahq_8x"
EVAL_TEACHER = "python evaluate.py ckpt_path=PATH teacher=checkpoint teacher.ckpt_path=TEACHER"
MODEL_ZOO = "python scripts/model_zoo.py"
INSPECT = "python scripts/inspect_data.py data=NAME data.root=DIR [data.resolution=256]"
REPRODUCE = "python scripts/reproduce.py --budget cpu_short --ablations"
GUIDANCE_SWEEP = (
    "python evaluate.py mode=guidance_sweep ckpt_path=PATH metrics=[fid] "
    "metrics.fid.feature_extractor=fmnist_classifier guidance.scale=3"
)
INPAINT = (
    "python scripts/inpaint.py ckpt_path=PATH image=PATH mask=right_half|left_half|center|MASK.png "
    "method=newton|replace|dps"
)
EXPORT_DIFFUSERS = (
    "python scripts/export.py ckpt_path=logs/train/quickstart/checkpoints/last.ckpt format=diffusers "
    "output=exports/quickstart"
)
EXPORT_ONNX = (
    "python scripts/export.py ckpt_path=logs/train/quickstart/checkpoints/last.ckpt format=onnx "
    "output=exports/quickstart_onnx"
)
EVAL_EXPORT = (
    'python evaluate.py ckpt_path=exports/quickstart "metrics=[fid,macs,params,throughput]" '
    "metrics.fid.feature_extractor=fmnist_classifier num_samples=10000"
)
SAMPLE_ONNX = (
    "python exports/quickstart_onnx/sample_onnx.py exports/quickstart_onnx --num-samples 16 --seed 0 --out samples.png"
)
EVAL_HUB = "python evaluate.py ckpt_path=google/ddpm-cifar10-32 data=cifar10 metrics=[fid,kid,macs,params,throughput]"

#: README command -> the test that runs a cheap variant of exactly it.
RUNS: dict[str, str] = {
    QUICKSTART: "test_quickstart",
    OVERRIDES: "test_overrides_example",
    BASE_GPU: "test_fmnist_base_gpu_experiment",
    TENSORBOARD_BF16: "test_tensorboard_and_bf16",
    DRY_RUN: "test_dry_run_writes_nothing",
    FDR: "test_debug_fdr",
    AUTOENCODER: "test_autoencoder_latents_chain",
    ENCODE_LATENTS: "test_autoencoder_latents_chain",
    LATENT_RUN: "test_autoencoder_latents_chain",
    WRITE_SHARDS: "test_write_shards_then_train_from_them",
    STREAMING_RUN: "test_write_shards_then_train_from_them",
    FMNIST_TEACHER: "test_fmnist_teacher_then_student",
    FMNIST_DISTILL: "test_fmnist_teacher_then_student",
    **{ablation: "test_ablation_on_its_own" for ablation in ABLATIONS},
    CIFAR10_DISTILL: "test_cifar10_distillation",
    CELEBAHQ_DISTILL: "test_celebahq256_distillation",
    CHURCH_DISTILL: "test_lsun_church256_distillation",
    OPTUNA: "test_optuna_search",
    GRID: "test_grid_sweep",
    PARETO: "test_pareto_of_the_grid_sweep",
    EVAL_ALL: "test_evaluate_every_metric",
    EVAL_OFFLINE_FD: "test_evaluate_offline_fd_trains_the_classifier_on_first_use",
    EVAL_REFERENCE: "test_evaluate_reference_statistics",
    EVAL_PRESET: "test_evaluate_preset_cost",
    EVAL_TEACHER: "test_evaluate_student_against_teacher",
    MODEL_ZOO: "test_model_zoo",
    INSPECT: "test_inspect_data",
    GUIDANCE_SWEEP: "test_guidance_sweep",
    INPAINT: "test_inpaint",
    EXPORT_DIFFUSERS: "test_export_and_deploy",
    EXPORT_ONNX: "test_export_and_deploy",
    EVAL_EXPORT: "test_export_and_deploy",
    SAMPLE_ONNX: "test_export_and_deploy",
}

#: README command -> (why it cannot run here, the tests that check what can be checked).
CANNOT_RUN: dict[str, tuple[str, tuple[str, ...]]] = {
    "bash scripts/install.sh": (
        "creates .venv and pip-installs the package and its dependencies from the network, and apt-gets "
        "Debian's dataset-fashion-mnist: it sets up the machine these tests run on",
        (),
    ),
    "python -m pytest": ("the test suite itself", ()),
    PIP_SLURM: ("installs packages from the network into the environment the tests run in", ()),
    DDP_16_GPUS: (
        "needs 16 GPUs on 2 nodes; composed and resolved instead, with the batch plan train.py derives from it",
        ("test_ddp_16_gpus_composes_to_the_batch_plan",),
    ),
    SLURM: (
        "needs a SLURM cluster; composed instead, the launcher node resolved and instantiated, and the command "
        "run as far as sbatch (a stand-in that keeps the script)",
        ("test_slurm_launcher_node_resolves", "test_slurm_command_gets_to_sbatch"),
    ),
    EVAL_HUB: (
        "downloads google/ddpm-cifar10-32 and CIFAR-10 from the network; a UNet2DModel folder saved by diffusers "
        "(test_distillation.py: save_diffusers_teacher) is loaded by the same code path, and an exported folder "
        "is evaluated in test_export_and_deploy",
        ("test_export_and_deploy",),
    ),
    REPRODUCE: (
        "the cpu_short budget trains eleven models (2000 and 800 steps) for about two hours and writes into the repository's logs/ and docs/; "
        "its argument parsing and the train.py and evaluate.py commands it would run are checked with train.py "
        "stubbed out, and tests/test_reproduce.py runs the whole chain on the smoke budget",
        ("test_reproduce_cpu_budget_plan",),
    ),
}

#: The placeholders the README uses for values the user fills in.
PLACEHOLDERS = {"DIR", "PATH", "TEACHER", "DIR_OR_ZIP", "NAME", "MASK.png", "<run_name>", "..."}


def test_every_readme_command_is_accounted_for():
    commands = readme_commands()
    untested = [c for c in commands if c not in RUNS and c not in CANNOT_RUN]
    assert not untested, "README commands without a test here (add them to RUNS or CANNOT_RUN):\n" + "\n".join(untested)
    stale = [c for c in [*RUNS, *CANNOT_RUN] if c not in commands]
    assert not stale, "table entries that are no longer README commands:\n" + "\n".join(stale)
    assert not set(RUNS) & set(CANNOT_RUN)
    tests = [*RUNS.values(), *(name for _, names in CANNOT_RUN.values() for name in names)]
    missing = [name for name in tests if not callable(globals().get(name))]
    assert not missing, f"tables name tests that do not exist: {missing}"
    assert all(reason for reason, _ in CANNOT_RUN.values())


def test_extraction_joins_continuations_drops_comments_and_reads_inline_spans():
    text = "\n".join(
        [
            "Run `python a.py x=1` or `pytest`, or `python b.py y=2",
            "  z=3` across a line break.",
            "```bash",
            "# a comment line",
            "bash setup.sh && .venv/bin/python c.py k=v          # trailing comment",
            ".venv/bin/python d.py a=1 \\",
            "    b=2",
            "```",
            "```yaml",
            "python: not a command",
            "```",
        ]
    )
    blocks_first = ["bash setup.sh", "python c.py k=v", "python d.py a=1 b=2"]
    assert readme_commands(text) == [*blocks_first, "python a.py x=1", "python b.py y=2 z=3"]
    # The README's own multi-line and wrapped commands come out whole.
    assert ENCODE_LATENTS in readme_commands() and GUIDANCE_SWEEP in readme_commands()


# == parsing a command, composing it ==============================================================
SCRIPTS: dict[str, str] = {
    "train.py": "train",
    "evaluate.py": "evaluate",
    "scripts/encode_latents.py": "encode_latents",
    "scripts/write_shards.py": "write_shards",
    "scripts/inspect_data.py": "inspect_data",
    "scripts/inpaint.py": "inpaint",
    "scripts/pareto.py": "pareto",
    "scripts/export.py": "export",
}


def readme_args(command: str, optional: bool = True, **values: Any) -> list[str]:
    """The overrides of a README command, its placeholders replaced by ``values``.

    ``values`` maps a placeholder to its value: ``DIR=...`` replaces ``key=DIR``, ``image=...`` replaces
    the placeholder of ``image=PATH`` (where two keys share one), ``run_name=...`` replaces ``<run_name>``
    inside a value. ``[key=value]`` (optional) is kept if ``optional``;
    ``...`` is dropped. A placeholder left over is an error.
    """
    words = shlex.split(command)
    assert words[0] == "python" and words[1] in SCRIPTS, command
    args = []
    for word in words[2:]:
        if word in ("-m", "..."):
            continue
        if word.startswith("[") and word.endswith("]"):
            if not optional:
                continue
            word = word[1:-1]
        key, sep, value = word.partition("=")
        if sep and value in PLACEHOLDERS and key in values:  # by key: ckpt_path=PATH image=PATH
            value = str(values[key])
        elif sep and value in values:
            value = str(values[value])
        for name, replacement in values.items():
            value = value.replace(f"<{name}>", str(replacement))
        left = [p for p in PLACEHOLDERS if p == value or (p.startswith("<") and p in value)]
        assert not left, f"{command}: no value for {left}"
        args.append(f"{key}={value}" if sep else key)
    return args


def config_name(command: str) -> str:
    return SCRIPTS[shlex.split(command)[1]]


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


#: Keys of the run's size that the cheap variant always sets, also where the command sets them.
BUDGET_KEYS = {"trainer.max_steps", "num_samples"}


def cheapened(args: list[str], cheap: list[str]) -> list[str]:
    """``args`` and then the cheap overrides, except those of a key the command sets itself (budgets aside)."""
    own = {override_key(a) for a in args}
    return [*args, *(c for c in cheap if override_key(c) not in own or override_key(c) in BUDGET_KEYS)]


def check_as_written(cfg: DictConfig, args: list[str]) -> None:
    """Every override of ``args`` is in the composed config: a value at its key, an option in the choices."""
    choices = cfg.hydra.runtime.choices
    for override in OverridesParser.create().parse_overrides(args):
        if override.is_sweep_override():
            continue
        key, value = override.key_or_group, override.value()
        if (Path(CONFIG_DIR) / key).is_dir() and isinstance(value, list):  # GROUP=[A,B]: a node per option
            assert set(value) <= set(cfg.get(key) or {}), f"{key}={value}: the composed {key} has {list(cfg[key])}"
        elif (Path(CONFIG_DIR) / key).is_dir():  # GROUP=OPTION
            assert choices.get(key) == value, f"{key}={value}: hydra chose {choices.get(key)}"
        else:
            actual = OmegaConf.select(cfg, key, throw_on_missing=False)
            if isinstance(actual, (DictConfig, ListConfig)):
                actual = OmegaConf.to_container(actual)
            assert actual == value, f"{key}={value!r}: the composed config has {actual!r}"


def compose_readme(command: str, workdir: Path, args: list[str], cheap: list[str]) -> DictConfig:
    """Compose ``args`` as written (and check them), then the cheap variant that is run."""
    check_as_written(compose_in_workdir(config_name(command), workdir, args), args)
    return compose_in_workdir(config_name(command), workdir, cheapened(args, cheap))


_scripts: dict[str, Any] = {}


def script(name: str) -> Any:
    """``scripts/<name>.py`` as a module (its entry function is called directly, as the tests do)."""
    if name not in _scripts:
        spec = importlib.util.spec_from_file_location(f"readme_{name}", ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _scripts[name] = module
    return _scripts[name]


#: The entry function of each config: what ``python SCRIPT.py`` calls with the composed config.
ENTRY: dict[str, Callable[[DictConfig], Any]] = {
    "train": train,
    "evaluate": evaluate,
    "encode_latents": lambda cfg: script("encode_latents").encode_latents(cfg),
    "write_shards": lambda cfg: script("write_shards").write(cfg),
    "inspect_data": lambda cfg: script("inspect_data").inspect_data(cfg),
    "inpaint": lambda cfg: script("inpaint").run_inpaint(cfg),
    "pareto": lambda cfg: script("pareto").make_pareto(cfg),
    "export": lambda cfg: script("export").export(cfg),
}


def run_readme(
    command: str, workdir: Path, cheap: list[str], optional: bool = True, **values: Any
) -> tuple[DictConfig, Any]:
    """Run the cheap variant of a README command in ``workdir`` (the current directory must be it)."""
    assert Path.cwd() == workdir.resolve(), "chdir into the working directory first"
    cfg = compose_readme(command, workdir, readme_args(command, optional, **values), cheap)
    return cfg, ENTRY[config_name(command)](cfg)


def in_workdir(path: Path):
    """Make ``path`` the current directory until the returned patch is undone (for module-scoped fixtures)."""
    patch = pytest.MonkeyPatch()
    path.mkdir(parents=True, exist_ok=True)
    patch.chdir(path)
    return patch


# == cheap overrides ==============================================================================
#: The tiny UNet of configs/debug/tiny.yaml, spelled out: debug=tiny would also rename the run
#: (run_name=debug_tiny), and the README's later commands look for the runs by their own names.
TINY_UNET = [
    "model.base_channels=8",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[]",
    "model.head_channels=8",
]
#: A two-step run: validation and the final sample grid made small, no progress lines.
TWO_STEPS = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "data.batch_size=4",
    "sampler.steps=3",
    "callbacks.sample_grid.num_samples=4",
    "callbacks.progress=null",
]
#: Image data sets with worker processes by default: tiny fixtures read faster in the main process.
NO_WORKERS = ["data.num_workers=0"]


def fmnist_data(root: Path) -> list[str]:
    """The tiny Fashion-MNIST fixture in place of Debian's folder (or torchvision's download)."""
    return [f"data.root={root}", "data.download=false"]


def tiny_train(fmnist_root: Path | None = None, *extra: str) -> list[str]:
    return [*TINY_UNET, *TWO_STEPS, *(fmnist_data(fmnist_root) if fmnist_root else []), *extra]


#: Cheap evaluation: a few samples, few sampler steps, a small grid and small metric batches.
TINY_EVAL = ["num_samples=8", "batch_size=4", "grid_samples=4", "sampler.steps=2"]


# == shared checks ================================================================================
def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_trained(cfg: DictConfig, steps: int, metric: float | None = None) -> dict:
    """A finished run: last.ckpt at ``steps``, metrics.json, the run record, a final sample grid."""
    out = Path(cfg.paths.output_dir)
    ckpt = load_ckpt(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == steps
    record = json.loads((out / "metrics.json").read_text())
    assert record["global_step"] == steps and record["run_dir"] == str(out)
    if metric is not None:
        assert math.isfinite(metric) and record[cfg.optimized_metric] == pytest.approx(metric)
    assert (out / "config.yaml").is_file() and (out / "git.json").is_file()
    assert (out / "samples" / "final.png").is_file()
    return ckpt


def stored_config(ckpt: dict) -> dict:
    return ckpt["spectral_diffusion"]["config"]


def finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# == fixtures =====================================================================================
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread (two spin-wait on each other on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def forget_hydra_config():
    """Leave no HydraConfig of a working directory here behind for other tests (task_wrapper reads it)."""
    yield
    HydraConfig.instance().cfg = None


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """InceptionV3 with random weights in torch-fidelity's layout (as test_evaluation_parts.py makes them):
    the real network and resize, for ``metrics.fid.weights_path``, without downloading the weights."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    from spectral_diffusion.evaluation.extractors import build_feature_extractor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        state = build_feature_extractor("inception").net.state_dict()
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, fmnist_root) -> SimpleNamespace:
    """``python train.py`` (the quickstart, two steps of a tiny UNet) in a working directory of its own,
    which the evaluations and inpainting of its checkpoint then use."""
    workdir = tmp_path_factory.mktemp("quickstart")
    patch = in_workdir(workdir)
    try:
        cfg, metric = run_readme(QUICKSTART, workdir, tiny_train(fmnist_root))
    finally:
        patch.undo()
    return SimpleNamespace(workdir=workdir, cfg=cfg, metric=metric, ckpt=workdir / QUICKSTART_CKPT)


#: Where the README's evaluation commands find the quickstart's checkpoint.
QUICKSTART_CKPT = "logs/train/quickstart/checkpoints/last.ckpt"


# == train.py: the quickstart and the Configs section =============================================
def test_quickstart(quickstart):
    assert quickstart.cfg.paths.output_dir == str(quickstart.workdir / "logs" / "train" / "quickstart")
    ckpt = assert_trained(quickstart.cfg, 2, quickstart.metric)
    stored = stored_config(ckpt)
    # The quickstart's own settings: Fashion-MNIST in pixel space, fmnist_small's layout (made tiny here).
    assert stored["data"]["_target_"].endswith("FashionMNISTDataModule") and stored["model"]["image_size"] == 32
    assert stored["autoencoder"]["_target_"].endswith("IdentityFirstStage") and stored["run_name"] == "quickstart"
    assert compose_in_workdir("train", quickstart.workdir).trainer.max_steps == 1000  # the README's "1000 steps"
    assert (quickstart.workdir / "logs" / "train" / "quickstart" / "csv" / "metrics.csv").is_file()


def test_overrides_example(tmp_path, monkeypatch, fmnist_root):
    monkeypatch.chdir(tmp_path)
    args = readme_args(OVERRIDES)
    assert compose_in_workdir("train", tmp_path, args).trainer.max_steps == 200
    cfg, metric = run_readme(OVERRIDES, tmp_path, tiny_train(fmnist_root))
    assert cfg.data.batch_size == 32  # the command's batch size, not the cheap one
    ckpt = assert_trained(cfg, 2, metric)
    assert stored_config(ckpt)["data"]["batch_size"] == 32


def test_fmnist_base_gpu_experiment(tmp_path, monkeypatch, fmnist_root):
    monkeypatch.chdir(tmp_path)
    as_written = compose_in_workdir("train", tmp_path, readme_args(BASE_GPU))
    assert as_written.trainer.accelerator == "gpu" and as_written.trainer.precision == "bf16-mixed"
    assert as_written.diffusion.prediction_type == "v" and as_written.diffusion.schedule == "cosine"
    # On this CPU-only machine: the CPU instead of the GPU, with the experiment's bf16-mixed precision kept.
    cfg, metric = run_readme(BASE_GPU, tmp_path, [*tiny_train(fmnist_root), "trainer.accelerator=cpu", *NO_WORKERS])
    assert cfg.trainer.precision == "bf16-mixed"
    ckpt = assert_trained(cfg, 2, metric)
    stored = stored_config(ckpt)
    assert stored["run_name"] == "fmnist_base_gpu" and stored["diffusion"]["prediction_type"] == "v"
    assert Path(cfg.paths.output_dir) == tmp_path / "logs" / "train" / "fmnist_base_gpu"


def test_tensorboard_and_bf16(tmp_path, monkeypatch, fmnist_root):
    monkeypatch.chdir(tmp_path)
    cfg, metric = run_readme(TENSORBOARD_BF16, tmp_path, tiny_train(fmnist_root))
    ckpt = assert_trained(cfg, 2, metric)
    out = Path(cfg.paths.output_dir)
    assert list((out / "tensorboard").glob("events.out.tfevents.*")) and not (out / "csv").exists()
    assert stored_config(ckpt)["trainer"]["precision"] == "bf16-mixed"
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg, result = run_readme(DRY_RUN, tmp_path, [])  # nothing to make cheap: it trains nothing
    assert result is None
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["paths"]["output_dir"] == str(tmp_path / "logs" / "train" / "quickstart")
    assert printed["dry_run"] is True and printed["trainer"]["max_steps"] == 1000
    assert list(tmp_path.iterdir()) == []


# == the debug= presets ===========================================================================
def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


#: Every configs/debug/ preset -> the test that runs it.
DEBUG_TESTS = {"fdr": "test_debug_fdr", "overfit": "test_debug_overfit", "tiny": "test_debug_tiny"}


def test_every_debug_preset_has_a_run():
    assert sorted(DEBUG_TESTS) == options("debug")
    assert all(callable(globals().get(name)) for name in DEBUG_TESTS.values())


def test_debug_fdr(tmp_path, monkeypatch, fmnist_root):
    """``debug=fdr`` exactly as is (the data fixture aside): no logger, so no LearningRateMonitor either."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    from train import build_callbacks

    monkeypatch.chdir(tmp_path)
    cfg, metric = run_readme(FDR, tmp_path, fmnist_data(fmnist_root))
    assert cfg.logger is None and cfg.callbacks.lr_monitor is not None and cfg.trainer.fast_dev_run is True
    assert not any(isinstance(c, LearningRateMonitor) for c in build_callbacks(cfg, has_logger=False))
    assert math.isfinite(metric)  # one validation batch ran
    out = tmp_path / "logs" / "train" / "debug_fdr"
    record = json.loads((out / "metrics.json").read_text())
    assert record["global_step"] == 1 and record["val/loss"] == pytest.approx(metric)
    assert not (out / "csv").exists() and not (out / "tensorboard").exists()  # no logger


def test_debug_fdr_writes_no_checkpoint_and_runs_again(tmp_path, monkeypatch, fmnist_root):
    monkeypatch.chdir(tmp_path)
    run_readme(FDR, tmp_path, fmnist_data(fmnist_root))
    checkpoints = tmp_path / "logs" / "train" / "debug_fdr" / "checkpoints"
    listed = sorted(p.name for p in checkpoints.iterdir()) if checkpoints.exists() else []
    run_readme(FDR, tmp_path, fmnist_data(fmnist_root))  # "does the whole pipeline run?", asked twice
    assert listed == []


def test_debug_overfit(tmp_path, monkeypatch, fmnist_root):
    """``debug=overfit`` for 4 of its 500 steps (and so validation at step 4 rather than 100)."""
    monkeypatch.chdir(tmp_path)
    cheap = [
        *fmnist_data(fmnist_root),
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "callbacks.progress=null",
    ]
    cfg = compose_in_workdir("train", tmp_path, ["debug=overfit", *cheap])
    assert cfg.trainer.overfit_batches == 4 and cfg.run_name == "debug_overfit"
    metric = train(cfg)
    ckpt = assert_trained(cfg, 4, metric)
    assert stored_config(ckpt)["trainer"]["overfit_batches"] == 4
    assert Path(cfg.paths.output_dir) == tmp_path / "logs" / "train" / "debug_overfit"


def test_debug_tiny(tmp_path, monkeypatch, fmnist_root):
    monkeypatch.chdir(tmp_path)
    cfg = compose_in_workdir("train", tmp_path, ["debug=tiny", *fmnist_data(fmnist_root), "callbacks.progress=null"])
    metric = train(cfg)
    ckpt = assert_trained(cfg, 4, metric)  # "a 4-step tiny run"
    out = tmp_path / "logs" / "train" / "debug_tiny"
    assert (out / "checkpoints" / "step_0000002.ckpt").is_file() and (out / "samples" / "step_0000002.png").is_file()
    assert stored_config(ckpt)["model"]["base_channels"] == 8


# == latents: the autoencoder, its latent store, a run on it ======================================
TINY_AUTOENCODER = ["model.base_channels=8", "model.head_channels=8"]  # channel_mult [1,2,2] kept: f4, 4x8x8


def test_autoencoder_latents_chain(tmp_path, monkeypatch, fmnist_root):
    from spectral_diffusion.data import LatentDataModule

    monkeypatch.chdir(tmp_path)
    cfg, metric = run_readme(AUTOENCODER, tmp_path, [*TINY_AUTOENCODER, *TWO_STEPS, *fmnist_data(fmnist_root)])
    ae = assert_trained(cfg, 2, metric)
    stats = ae["spectral_diffusion"]["latent_stats"]
    assert len(stats["shift"]) == 4 and all(s > 0 for s in stats["scale"])

    _, stores = run_readme(ENCODE_LATENTS, tmp_path, fmnist_data(fmnist_root))
    assert set(stores) == {"train", "val"}
    latents = LatentDataModule("data/fmnist_latents", batch_size=8)
    assert len(latents.train_store) == 2 * 64 and len(latents.val_store) == 32  # flips=true: train mirrored too
    assert latents.image_shape == (4, 8, 8)
    # The autoencoder's own statistics, not re-estimated.
    assert {k: latents.latent_stats[k] for k in ("shift", "scale")} == {k: stats[k] for k in ("shift", "scale")}

    cfg, metric = run_readme(LATENT_RUN, tmp_path, [*TINY_UNET, *TWO_STEPS])
    assert list(cfg.model.attention_resolutions) == [4]  # the command's, not the tiny preset's
    ckpt = assert_trained(cfg, 2, metric)
    stored = stored_config(ckpt)
    assert stored["data"]["_target_"].endswith("LatentDataModule") and stored["model"]["in_channels"] == 4
    grid = Image.open(Path(cfg.paths.output_dir) / "samples" / "final.png")
    assert grid.size[0] >= 2 * 32  # decoded to 32x32 images, not 8x8 latents


def test_write_shards_then_train_from_them(tmp_path, monkeypatch, fmnist_root):
    monkeypatch.chdir(tmp_path)
    # forkserver (preloaded by tests/conftest.py): the writer starts in a fraction of a second; spawn, its
    # default, takes seconds per split, and fork is unsafe in a test process that other tests left threads in.
    _, counts = run_readme(
        WRITE_SHARDS, tmp_path, [*fmnist_data(fmnist_root), "num_workers=1", "start_method=forkserver"]
    )
    assert counts == {"train": 64, "val": 32}
    assert (tmp_path / "data/shards/fmnist/train/index.json").is_file()
    cfg, metric = run_readme(STREAMING_RUN, tmp_path, [*TINY_UNET, *TWO_STEPS, *NO_WORKERS])
    ckpt = assert_trained(cfg, 2, metric)
    stored = stored_config(ckpt)
    assert stored["data"]["_target_"].endswith("StreamingDataModule")
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["num_samples_yielded"] == 2 * 4


# == distillation on Fashion-MNIST ================================================================
@pytest.fixture(scope="module")
def distill(tmp_path_factory, fmnist_root) -> dict[str, Path]:
    """``experiment=fmnist_teacher``, then ``experiment=fmnist_sd_distill``, in one working directory;
    a copy of it as it was after the teacher alone, for the ablations."""
    workdir = tmp_path_factory.mktemp("distill")
    patch = in_workdir(workdir)
    try:
        run_readme(FMNIST_TEACHER, workdir, tiny_train(fmnist_root))
        teacher_only = tmp_path_factory.mktemp("teacher_only")
        shutil.copytree(workdir, teacher_only, dirs_exist_ok=True)
        run_readme(FMNIST_DISTILL, workdir, tiny_train(fmnist_root))
    finally:
        patch.undo()
    return {"workdir": workdir, "teacher_only": teacher_only}


def test_fmnist_teacher_then_student(distill):
    workdir = distill["workdir"]
    teacher = assert_trained(compose_in_workdir("train", workdir, ["experiment=fmnist_teacher"]), 2)
    student_cfg = compose_in_workdir("train", workdir, ["experiment=fmnist_sd_distill"])
    # The student finds the teacher run's last.ckpt by itself (teacher=fmnist_teacher).
    assert student_cfg.teacher.ckpt_path == str(
        workdir / "logs" / "train" / "fmnist_teacher" / "checkpoints" / "last.ckpt"
    )
    student = assert_trained(student_cfg, 2)
    assert stored_config(student)["loss"]["_target_"].endswith("SpectralDistillationLoss")
    assert stored_config(teacher)["model"]["downsample"] != stored_config(student)["model"]["downsample"]
    assert not any("teacher" in k for k in student["state_dict"])  # the teacher is never saved with the student
    assert_distilled(student_cfg)


def assert_distilled(cfg: DictConfig) -> None:
    """The run's validation measured every term of L = L_DDPM + lambda_s L_spatial + lambda_f L_freq,
    and the student's checkpoint loads (through the checked loader) and evaluates."""
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert finite(*(metrics[f"val/{term}"] for term in ("loss", "ddpm", "spatial", "freq"))), metrics
    assert metrics["val/spatial"] > 0  # teacher and student differ
    ckpt = out / "checkpoints" / "last.ckpt"
    bundle = load_run(ckpt)
    assert bundle.shape == (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    evaluated = evaluate(
        compose_config(
            "evaluate",
            out / "eval",
            [f"ckpt_path={ckpt}", "metrics=[macs,params]", "grid_samples=2", "sampler.steps=2"],
        )
    )
    assert evaluated["gmacs"] > 0 and evaluated["global_step"] == 2 and (out / "eval" / "run" / "samples.png").is_file()


@pytest.mark.parametrize("command", ABLATIONS)
def test_ablation_after_the_full_run_in_readme_order(command, distill, monkeypatch, fmnist_root):
    """In README order, after the full run: each ablation is a run of its own (its run_name), not a resume."""
    workdir = distill["workdir"]
    monkeypatch.chdir(workdir)
    cfg, metric = run_readme(command, workdir, tiny_train(fmnist_root))
    run_name = next(t for t in command.split() if t.startswith("run_name=")).split("=", 1)[1]
    assert Path(cfg.paths.output_dir) == workdir / "logs" / "train" / run_name
    assert_trained(cfg, 2, metric)


#: What each ablation switches, against the full spectral_distill loss (configs/loss/).
ABLATION_LOSSES = {
    "loss=denoising": {"_target_": "spectral_diffusion.losses.DenoisingLoss"},
    "loss=distill_output": {"features": False, "lambda_freq": 0.0},
    "loss=distill_features": {"features": True, "lambda_freq": 0.0},
    "loss.alpha=0": {"alpha": 0, "lambda_freq": 0.1},
}


@pytest.mark.parametrize("command", ABLATIONS)
def test_ablation_on_its_own(command, distill, tmp_path, fmnist_root, monkeypatch):
    """Each ablation right after the teacher (a copy of that working directory): the one switch it makes."""
    workdir = tmp_path / "work"
    shutil.copytree(distill["teacher_only"], workdir)
    monkeypatch.chdir(workdir)
    cfg, metric = run_readme(command, workdir, tiny_train(fmnist_root))
    stored = stored_config(assert_trained(cfg, 2, metric))["loss"]
    expected = ABLATION_LOSSES[next(t for t in command.split() if t.startswith("loss"))]
    assert {k: stored.get(k) for k in expected} == expected
    if "DenoisingLoss" not in stored["_target_"]:
        assert stored["_target_"].endswith("SpectralDistillationLoss") and stored["lambda_spatial"] == 0.1


def test_evaluate_student_against_teacher(distill, monkeypatch):
    workdir = distill["workdir"]
    monkeypatch.chdir(workdir)
    runs = workdir / "logs" / "train"
    student, teacher = (
        runs / "fmnist_sd_distill" / "checkpoints" / "last.ckpt",
        runs / "fmnist_teacher" / "checkpoints" / "last.ckpt",
    )
    cfg, metrics = run_readme(EVAL_TEACHER, workdir, TINY_EVAL, PATH=student, TEACHER=teacher)
    assert str(student) in metrics["ckpt_path"] and metrics["weights"] == "ema"
    assert str(teacher) in metrics["teacher"]["source"]
    assert metrics["student_over_teacher"]["gmacs"] == pytest.approx(metrics["gmacs"] / metrics["teacher"]["gmacs"])
    assert metrics["student_over_teacher"]["params_m"] == pytest.approx(
        metrics["params_m"] / metrics["teacher"]["params_m"]
    )
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["student_over_teacher"] == metrics["student_over_teacher"] and written["global_step"] == 2


# == distillation on real data ====================================================================
@pytest.fixture(scope="module")
def local_hub_copies(tmp_path_factory) -> dict[str, Path]:
    """Tiny diffusers models of the kind and shape of the experiments' hub teachers.

    - ``google/ddpm-cifar10-32``: unet/ and scheduler/ (linear betas 1e-4..0.02), 3x32x32 pixels;
    - ``CompVis/ldm-celebahq-256``: unet/ on 3x64x64 latents, vqvae/ (a VQ-f4 VQModel, 3 latent
      channels) and scheduler/ (scaled_linear betas 0.0015..0.0195).
    """
    from diffusers import DDPMScheduler, UNet2DModel, VQModel

    root = tmp_path_factory.mktemp("hub")
    cifar = save_diffusers_teacher(root / "ddpm-cifar10-32", in_channels=3, size=32)
    celebahq = root / "ldm-celebahq-256"
    torch.manual_seed(0)
    UNet2DModel(
        sample_size=64, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, attention_head_dim=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).save_pretrained(celebahq / "unet")  # fmt: skip
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195).save_pretrained(
        celebahq / "scheduler"
    )
    VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
        latent_channels=3, norm_num_groups=4, num_vq_embeddings=16, vq_embed_dim=3,
    ).save_pretrained(celebahq / "vqvae")  # fmt: skip
    return {"google/ddpm-cifar10-32": cifar, "CompVis/ldm-celebahq-256": celebahq}


def test_cifar10_distillation(tmp_path, monkeypatch, cifar_root, local_hub_copies):
    monkeypatch.chdir(tmp_path)
    hub_id = compose_in_workdir("train", tmp_path, readme_args(CIFAR10_DISTILL, DIR=cifar_root)).teacher.path
    assert hub_id == "google/ddpm-cifar10-32"
    # Offline, as a user without the hub does: teacher.path=a local copy (here a tiny one of the same layout and shape).
    cheap = [*tiny_train(), *NO_WORKERS, f"teacher.path={local_hub_copies[hub_id]}"]
    cfg, metric = run_readme(CIFAR10_DISTILL, tmp_path, cheap, DIR=cifar_root)
    stored = stored_config(assert_trained(cfg, 2, metric))
    assert stored["data"]["_target_"].endswith("CIFAR10DataModule") and stored["data"]["root"] == str(cifar_root)
    assert stored["model"]["downsample"] == "wavelet_gated" and stored["model"]["in_channels"] == 3
    assert_distilled(cfg)


def test_celebahq256_distillation(tmp_path, monkeypatch, celeba_root, local_hub_copies):
    """DIR_OR_ZIP as the zip; the image folder is read by test_evaluate_reference_statistics."""
    monkeypatch.chdir(tmp_path)
    archive = celeba_root / "data256x256.zip"
    hub_id = compose_in_workdir("train", tmp_path, readme_args(CELEBAHQ_DISTILL, DIR_OR_ZIP=archive)).teacher.path
    assert hub_id == "CompVis/ldm-celebahq-256"
    cheap = [
        *tiny_train(),
        *NO_WORKERS,
        f"teacher.path={local_hub_copies[hub_id]}",  # offline: a local copy of the hub teacher, tiny here
        "data.val_size=3",  # the fixture has 10 images, not CelebA-HQ's 30,000
        "latent_stats_samples=8",
    ]
    cfg, metric = run_readme(CELEBAHQ_DISTILL, tmp_path, cheap, DIR_OR_ZIP=archive)
    ckpt = assert_trained(cfg, 2, metric)
    stored = stored_config(ckpt)
    assert stored["data"]["resolution"] == 256 and stored["model"]["image_size"] == 64  # VQ-f4 latents of 256x256
    out = Path(cfg.paths.output_dir)  # before evaluating: the path resolves against the current Hydra job
    assert_distilled(cfg)
    grid = Image.open(out / "samples" / "final.png")
    assert grid.size[0] >= 256  # decoded by the teacher's VQ-f4 to 256x256 images


@pytest.fixture(scope="module")
def church_teacher(tmp_path_factory, lsun_root) -> Path:
    """A framework teacher for the churches: ``experiment=lsun_church256_teacher data.root=DIR
    autoencoder.path=VAE_DIR`` (the experiment's own command), tiny, 1 step, on a tiny KL-f8 autoencoder."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("church_teacher")
    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4,
    ).save_pretrained(root / "kl-f8")  # fmt: skip
    overrides = [
        "experiment=lsun_church256_teacher",
        f"data.root={lsun_root}",
        f"autoencoder.path={root / 'kl-f8'}",
        *tiny_train(),
        *NO_WORKERS,
        "trainer.max_steps=1",
        "latent_stats_samples=8",
    ]
    cfg = compose_in_workdir("train", root, overrides)
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_lsun_church256_distillation(tmp_path, monkeypatch, lsun_root, church_teacher):
    monkeypatch.chdir(tmp_path)
    cheap = [*tiny_train(), *NO_WORKERS]
    cfg, metric = run_readme(CHURCH_DISTILL, tmp_path, cheap, DIR=lsun_root, PATH=church_teacher)
    ckpt = assert_trained(cfg, 2, metric)
    stored = stored_config(ckpt)
    assert stored["teacher"]["ckpt_path"] == str(church_teacher)
    assert stored["data"]["_target_"].endswith("LSUNDataModule") and stored["model"]["in_channels"] == 4
    # The teacher's autoencoder and latent statistics came with it.
    teacher_stats = load_ckpt(church_teacher)["spectral_diffusion"]["latent_stats"]
    assert ckpt["spectral_diffusion"]["latent_stats"] == teacher_stats
    assert_distilled(cfg)


# == evaluate.py ==================================================================================
def test_evaluate_every_metric(quickstart, monkeypatch, inception_weights):
    monkeypatch.chdir(quickstart.workdir)
    cheap = [
        *TINY_EVAL,
        f"metrics.fid.weights_path={inception_weights}",  # Inception, random weights in the real layout: offline
        f"metrics.kid.weights_path={inception_weights}",
        "reference.num_images=16",
        *CHEAP_METRIC_OVERRIDES,
    ]
    cfg, metrics = run_readme(EVAL_ALL, quickstart.workdir, cheap, PATH=quickstart.ckpt)
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    for key in ("fid", "kid_mean", "kid_std", "gmacs", "gmacs_per_sample", "params_m", "samples_per_s"):
        assert finite(written[key]), key
    assert written["fid"] >= 0 and written["gmacs_per_sample"] == pytest.approx(2 * written["gmacs"])
    protocol = written["protocol"]
    assert protocol["metric_key"] == "fid" and protocol["num_samples"] == 8 and protocol["weights"] == "ema"
    assert protocol["reference"]["num_images"] == 16 and "no antialias" in protocol["resize"]
    assert Path(written["spectral_report_json"]).is_file() and Path(written["samples_png"]).is_file()
    assert written["global_step"] == 2 and metrics["fid"] == written["fid"]


def test_evaluate_offline_fd_trains_the_classifier_on_first_use(quickstart, monkeypatch, tmp_path, fmnist_root, caplog):
    """The classifier's first-use training made cheap as tests/test_fmnist_weights.py does it: an empty cache,
    the tiny recipe, and the tiny Fashion-MNIST where Debian puts it."""
    import logging

    import spectral_diffusion.data.fashion_mnist as fashion_mnist
    from spectral_diffusion.evaluation import fmnist_weights

    from .test_fmnist_weights import TINY

    monkeypatch.chdir(quickstart.workdir)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPECTRAL_DIFFUSION_CACHE", str(cache))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", fmnist_root)
    monkeypatch.setattr(fmnist_weights, "DEFAULT_RECIPE", TINY)
    assert compose_in_workdir("evaluate", quickstart.workdir, readme_args(EVAL_OFFLINE_FD)).num_samples == 10000
    with caplog.at_level(logging.INFO):
        cfg, metrics = run_readme(EVAL_OFFLINE_FD, quickstart.workdir, TINY_EVAL)
    assert "training them once now" in caplog.text
    record = json.loads((cache / "fmnist_classifier.json").read_text())
    assert record["train_images"] == 64 and record["data_folder"] == str(fmnist_root)
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert finite(written["fd_fmnist"], written["gmacs"], written["params_m"], written["samples_per_s"])
    assert "fid" not in written  # the classifier's distance is never reported as FID
    assert written["protocol"]["feature_extractor"] == f"fmnist_classifier-{record['weights_sha256'][:12]}"
    assert metrics["protocol"]["num_samples"] == 8


def test_evaluate_reference_statistics(tmp_path, monkeypatch, celeba_root, inception_weights):
    monkeypatch.chdir(tmp_path)
    folder = celeba_root / "celebahq"
    cheap = [f"metrics.fid.weights_path={inception_weights}", *NO_WORKERS, "data.val_size=3"]
    _, first = run_readme(EVAL_REFERENCE, tmp_path, cheap, DIR=folder)
    _, again = run_readme(EVAL_REFERENCE, tmp_path, cheap, DIR=folder)
    assert first["computed"] and not again["computed"] and first["reference_stats"] == again["reference_stats"]
    assert first["num_images"] == 7 and first["split"] == "train"  # the 10 images less the 3 held out
    stats = Path(first["reference_stats"])
    assert stats.is_file() and stats.parent == tmp_path / "data" / "reference_stats"  # cached under paths.data_dir


def test_evaluate_preset_cost(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, metrics = run_readme(EVAL_PRESET, tmp_path, [])  # the preset as it is: only counted, never sampled
    assert metrics["gmacs"] == pytest.approx(12.44, abs=0.005)  # the README's "cost of a preset: 12.44 GMACs"
    assert metrics["params_m"] == pytest.approx(33.62, abs=0.005) and metrics["input_shape"] == "3x64x64"
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["gmacs"] == metrics["gmacs"]


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory, fmnist_root) -> Path:
    """A per-user cache holding the default fmnist_classifier weights (the tiny recipe, on the fixture)."""
    from spectral_diffusion.evaluation import fmnist_weights

    from .test_fmnist_weights import TINY

    cache = tmp_path_factory.mktemp("classifier_cache")
    fmnist_weights.default_weights(cache / "fmnist_classifier.pt", fmnist_root, TINY)
    return cache


def test_guidance_sweep(tmp_path, monkeypatch, fmnist_root, classifier_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPECTRAL_DIFFUSION_CACHE", str(classifier_cache))
    conditional = compose_in_workdir("train", tmp_path, ["experiment=fmnist_cond", *tiny_train(fmnist_root)])
    train(conditional)  # the class-conditional checkpoint the sweep needs (README: experiment=fmnist_cond)
    ckpt = Path(conditional.paths.output_dir) / "checkpoints" / "last.ckpt"
    cfg, result = run_readme(GUIDANCE_SWEEP, tmp_path, TINY_EVAL, PATH=ckpt)
    rows = result["rows"]
    assert [r["truncate_after"] for r in rows] == list(cfg.sweep.cutoffs) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [r["network_evaluations"] for r in rows] == sorted(r["network_evaluations"] for r in rows)
    assert rows[0]["network_evaluations"] == 2 and rows[-1]["network_evaluations"] == 4  # 2 steps, 1 or 2 calls
    assert all(r["num_samples"] == 8 and r["fd"] >= 0 and 0 <= r["class_accuracy"] <= 1 for r in rows)
    out = Path(cfg.paths.output_dir)
    assert (out / "guidance_sweep.md").is_file() and (out / "guidance_sweep.png").is_file()
    assert cfg.guidance.scale == 3


# == scripts/ =====================================================================================
def readme_preset_table() -> dict[str, tuple[str, str, str]]:
    """The README's preset table: preset -> (params (M), GMACs, ratio to the teacher), as printed there."""
    lines = README.read_text().split("| preset | what | params (M) | GMACs | vs teacher |\n", 1)[1].splitlines()[1:]
    rows = {}
    for line in itertools.takewhile(lambda row: row.startswith("|"), lines):
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`(\w+)`", cells[0])
        columns = [[v.strip() for v in cell.split("/")] for cell in cells[2:5]]
        rows |= {name: (params, gmacs, ratio) for name, params, gmacs, ratio in zip(names, *columns, strict=True)}
    return rows


def test_model_zoo(tmp_path):
    """``python scripts/model_zoo.py`` (its argparse main, ``--output`` into tmp_path): every preset, and the
    README's table of presets agrees with it."""
    output = tmp_path / "models.md"
    assert script("model_zoo").main(["--output", str(output)]) == 0
    zoo = {}
    for line in output.read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            zoo[cells[0].strip("`")] = (cells[2], float(cells[3]), cells[7])  # params, GMACs, "7.2x"
    assert set(zoo) == set(options("model"))
    readme = readme_preset_table()
    assert len(readme) == 8
    for preset, (params, gmacs, ratio) in readme.items():
        assert zoo[preset][0] == params, f"{preset}: README {params}M params, model_zoo.py {zoo[preset][0]}"
        assert zoo[preset][1] == pytest.approx(float(gmacs), abs=0.006), f"{preset}: GMACs {gmacs} vs {zoo[preset][1]}"
        as_float = [float(r.rstrip("x")) for r in (ratio, zoo[preset][2])]
        assert as_float[0] == as_float[1], f"{preset}: README {ratio} vs model_zoo.py {zoo[preset][2]}"


#: data=NAME -> (fixture, data.root inside it, with [data.resolution=256], cheap overrides, train and val images).
INSPECT_CASES = {
    "fashion_mnist": ("fmnist_root", "", False, ["data.download=false"], 64, 32),
    "cifar10": ("cifar_root", "", False, NO_WORKERS, 20, 6),  # the test batch is the validation split
    "celebahq": ("celeba_root", "data256x256.zip", True, [*NO_WORKERS, "data.val_size=3"], 7, 3),
    "lsun": ("lsun_root", "", True, NO_WORKERS, 7, 3),  # church_outdoor_val_lmdb is the validation split
}


@pytest.mark.parametrize("name", sorted(INSPECT_CASES))
def test_inspect_data(name, tmp_path, monkeypatch, request, capsys):
    fixture, inside, resolution, extra, train_count, val_count = INSPECT_CASES[name]
    root = request.getfixturevalue(fixture) / inside
    monkeypatch.chdir(tmp_path)
    cheap = ["throughput_batches=1", "grid_size=4", *extra]
    cfg, report = run_readme(INSPECT, tmp_path, cheap, optional=resolution, NAME=name, DIR=root)
    assert cfg.data.get("resolution", 32) == (256 if resolution else 32)
    assert (report["train"], report["val"]) == (train_count, val_count)
    probe = report["train_probe"]
    assert probe["checked"] == train_count and probe["unreadable"] == 0
    channels = 1 if name == "fashion_mnist" else 3
    assert len(probe["stats"]["mean"]) == channels and finite(*probe["stats"]["mean"], *probe["stats"]["std"])
    assert report["throughput"]["images_per_s"] > 0
    grid = Path(report["grid_path"])
    assert grid.name == "real_samples.png" and grid.parent.parent == tmp_path / "logs" / "inspect_data"
    assert Image.open(grid).size[0] >= 2 * (256 if resolution else 32)  # a 2x2 grid at data.resolution
    assert f"{train_count} train, {val_count} validation" in capsys.readouterr().out


def inpaint_cases() -> list[tuple[str, str]]:
    """Every mask and every method of the README's ``mask=A|B|... method=X|Y|...``."""
    values = dict(word.split("=", 1) for word in shlex.split(INPAINT)[2:])
    return list(itertools.product(values["mask"].split("|"), values["method"].split("|")))


@pytest.mark.parametrize("mask,method", inpaint_cases())
def test_inpaint(mask, method, quickstart, tmp_path, monkeypatch, fmnist_root):
    from spectral_diffusion.data.fashion_mnist import read_idx

    monkeypatch.chdir(quickstart.workdir)
    garment = read_idx(fmnist_root / "t10k-images-idx3-ubyte.gz")[0]  # a 28x28 Fashion-MNIST image
    image = tmp_path / "garment.png"
    Image.fromarray(garment).save(image)
    hole = np.zeros((28, 28), np.uint8)
    hole[6:22, 6:22] = 255  # white: generate
    Image.fromarray(hole).save(tmp_path / "hole.png")
    command = INPAINT.replace(re.search(r"mask=\S+", INPAINT).group(), f"mask={mask}")
    command = command.replace(re.search(r"method=\S+", command).group(), f"method={method}")
    values = {"ckpt_path": quickstart.ckpt, "image": image, "MASK.png": tmp_path / "hole.png"}
    cheap = ["num_samples=2", "sampler.steps=2", "newton.iterations=1"]
    cfg, metrics = run_readme(command, quickstart.workdir, cheap, **values)
    assert cfg.mask == str(values.get(mask, mask)) and cfg.method == method
    # The result, the mask and the grid are written next to the input; metrics.json into the run directory.
    result = Image.open(tmp_path / f"garment_{method}_result.png")
    assert result.size == (2 * 32, 32)  # two samples at the model's 32x32 (the 28x28 input resized)
    assert (tmp_path / "garment_mask.png").is_file() and (tmp_path / f"garment_{method}_grid.png").is_file()
    assert len(metrics["psnr_known_db"]) == 2 and metrics["latent"] is False
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["method"] == method and written["weights"] == "ema"
    assert Path(cfg.paths.output_dir).parent == quickstart.workdir / "logs" / "inpaint"


# == sweeps: python train.py -m, through Hydra's own multirun machinery ==========================
def run_multirun(command: str, workdir: Path, cheap: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    """``python train.py -m ARGS CHEAP`` started in ``workdir``: a sweep needs Hydra's launcher and sweeper."""
    args = readme_args(command)
    fixed = [
        a
        for a, o in zip(args, OverridesParser.create().parse_overrides(args), strict=True)
        if not o.is_sweep_override()
    ]
    check_as_written(compose_in_workdir("train", workdir, fixed), fixed)  # a single run composes without the sweep
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *cheapened(args, cheap)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise CommandFailed(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


class CommandFailed(RuntimeError):
    """A command run as its own process exited with an error (the message ends with its output)."""


#: A sweep's jobs: two steps of a tiny network on the fixture, no sample grids.
def sweep_cheap(fmnist_root: Path) -> list[str]:
    return [*tiny_train(fmnist_root), "callbacks.sample_grid.every_n_steps=0"]


def test_optuna_search(tmp_path, fmnist_root):
    """Two trials of the search (the network's width and depth fixed to the tiny ones, lr and warm-up searched)."""
    cfg = compose_in_workdir("train", tmp_path, readme_args(OPTUNA))
    assert cfg.hydra.sweeper._target_.endswith("SpectralOptunaSweeper") and cfg.hydra.sweeper.n_trials == 20
    run_multirun(OPTUNA, tmp_path, [*sweep_cheap(fmnist_root), "hydra.sweeper.n_trials=2"])
    sweep = tmp_path / "logs" / "train" / "optuna" / "fmnist_sd_optuna"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert [t["state"] for t in results["trials"]] == ["COMPLETE", "COMPLETE"]
    assert set(results["best_params"]) == {"module.optimizer.lr", "module.warmup_steps"}
    assert (sweep / "optuna.db").is_file()  # the study: re-running the command adds trials to it
    for trial in results["trials"]:
        record = json.loads((sweep / str(trial["number"]) / "metrics.json").read_text())
        assert record["global_step"] == 2 and record["val/loss"] == pytest.approx(trial["values"][0])
        assert "fmnist_sd" in (sweep / str(trial["number"]) / "config.yaml").read_text()


def check_grid(workdir: Path) -> tuple[Path, list[int], dict[str, dict]]:
    """The grid's three jobs, each in its numbered directory of logs/train/multirun/<run_name>."""
    sweep = workdir / "logs" / "train" / "multirun" / "quickstart"  # <run_name>: the default, quickstart
    records = {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}
    assert sorted(records) == ["0", "1", "2"]
    widths = [
        yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())["model"]["base_channels"] for job in "012"
    ]
    assert widths == [24, 32, 48] and all(r["global_step"] == 2 and finite(r["val/loss"]) for r in records.values())
    return sweep, widths, records


def test_grid_sweep(tmp_path, fmnist_root):
    run_multirun(GRID, tmp_path, sweep_cheap(fmnist_root))
    check_grid(tmp_path)


@pytest.mark.slow
def test_pareto_of_the_grid_sweep(tmp_path, monkeypatch, fmnist_root):
    """pareto.py as written, on the README's grid sweep as written."""
    run_multirun(GRID, tmp_path, sweep_cheap(fmnist_root))
    sweep, widths, records = check_grid(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg, result = run_readme(PARETO, tmp_path, [], run_name="quickstart")
    assert result["metric"] == "val/loss" and Path(cfg.dirs) == Path("logs/train/multirun/quickstart")
    assert (sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (sweep / "pareto.md").read_text().splitlines()[2:]
    assert len(rows) == 3 and all(f"model.base_channels={w}" in "".join(rows) for w in widths)
    gmacs = sorted(r["gmacs"] for r in records.values())
    assert [float(row.split("|")[2]) for row in rows] == pytest.approx(gmacs, rel=1e-3)  # sorted by cost


# == what cannot run here: composed and checked instead ===========================================
def test_ddp_16_gpus_composes_to_the_batch_plan(tmp_path):
    """16 GPUs: "128 images per device in 2 micro-batches of 64; the learning rate changes only if asked"."""
    from train import apply_batch_plan

    args = readme_args(DDP_16_GPUS)
    cfg = compose_in_workdir("train", tmp_path, args)
    check_as_written(cfg, args)
    resolved = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    assert resolved["trainer"]["strategy"] == "ddp" and resolved["trainer"]["precision"] == "bf16-mixed"
    assert resolved["tf32"] is True and resolved["module"]["compile_network"] is True
    lr = cfg.module.optimizer.lr
    plan = apply_batch_plan(cfg, world_size=cfg.trainer.devices * cfg.trainer.num_nodes)
    assert (plan.global_size, plan.world_size, plan.per_device, plan.accumulate) == (2048, 16, 64, 2)
    assert plan.per_device * plan.accumulate == 128
    assert cfg.data.batch_size == 64 and cfg.trainer.accumulate_grad_batches == 2 and cfg.module.optimizer.lr == lr


@pytest.mark.filterwarnings("ignore:(?s).*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema")
def test_slurm_launcher_node_resolves(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import hydra

    args = readme_args(SLURM)  # -m and the README's "..." dropped
    cfg = compose_in_workdir("train", tmp_path, args)
    check_as_written(cfg, args)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (2, 8, 8)
    assert launcher["partition"] == "gpu" and launcher["additional_parameters"]["signal"] == "USR1@300"
    assert launcher["submitit_folder"].startswith(str(tmp_path / "logs" / "train" / "multirun" / "quickstart"))
    assert type(hydra.utils.instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"


@pytest.mark.filterwarnings("ignore:(?s).*'hydra/launcher/submitit_slurm' is validated against ConfigStore schema")
def test_slurm_command_gets_to_sbatch(tmp_path):
    """The command itself, with sbatch and srun stand-ins: it must get as far as submitting its sbatch script."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    bin_dir, captured = tmp_path / "bin", tmp_path / "captured.sh"
    slurm_stand_ins(bin_dir, captured)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *readme_args(SLURM)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "HydraConfig was not set" not in result.stderr, result.stderr[-3000:]
    script = captured.read_text()  # the submission itself fails: the stand-in prints no job id
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
    ):
        assert line in script.splitlines(), script


def test_reproduce_cpu_budget_plan(tmp_path, monkeypatch):
    """``--budget cpu_short --ablations`` parsed by reproduce.py's own main, ``--stage train`` added to stop
    before evaluation, its ROOT moved into tmp_path and train.py stubbed: the eleven train.py commands compose,
    and so do the evaluate.py commands of the one protocol."""
    reproduce = script("reproduce")
    commands: list[list[str]] = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    stub = SimpleNamespace(run=fake_run, STDOUT=subprocess.STDOUT, CompletedProcess=subprocess.CompletedProcess)
    monkeypatch.setattr(reproduce, "subprocess", stub)  # only reproduce.py's own subprocess calls
    reproduce.main([*shlex.split(REPRODUCE)[2:], "--stage", "train"])
    assert [Path(c[1]).name for c in commands] == ["train.py"] * 11
    runs = {}
    for command in commands:
        cfg = compose_config("train", tmp_path / "compose", command[2:])
        runs[cfg.run_name] = cfg
        steps = 2000 if cfg.run_name.endswith("_teacher") else 800
        assert cfg.trainer.max_steps == steps and cfg.data.batch_size == 64 and cfg.trainer.accelerator == "cpu"
    front = ("teacher", "lite_4x", "sd_4x", "lite_8x", "sd_8x", "lite_18x", "sd_18x")
    ablations = ("sd_8x_no_distill", "sd_8x_output", "sd_8x_features", "lite_8x_distill")
    names = [f"repro_cpu_short_{n}" for n in front + ablations]
    assert list(runs) == names  # the teacher first: the students distil from it
    sd = runs["repro_cpu_short_sd_8x"]
    assert sd.loss._target_.endswith("SpectralDistillationLoss") and sd.model.base_channels == 12
    # relative to the directory the commands run in (reproduce's ROOT), so docs/results.md's commands work anywhere
    assert sd.teacher.ckpt_path == "logs/train/repro_cpu_short_teacher/checkpoints/last.ckpt"
    assert (
        sd.model.downsample == "wavelet_gated" and runs["repro_cpu_short_lite_8x"].model.downsample != "wavelet_gated"
    )
    assert runs["repro_cpu_short_lite_8x"].loss._target_.endswith("DenoisingLoss")
    assert sd.loss.normalize_features is True and sd.loss.features is True and sd.loss.lambda_freq > 0
    output_only, features = runs["repro_cpu_short_sd_8x_output"].loss, runs["repro_cpu_short_sd_8x_features"].loss
    assert output_only.features is False and output_only.lambda_freq == 0
    assert features.features is True and features.lambda_freq == 0
    assert runs["repro_cpu_short_sd_8x_no_distill"].loss._target_.endswith("DenoisingLoss")
    assert runs["repro_cpu_short_lite_8x_distill"].loss._target_.endswith("SpectralDistillationLoss")
    run = next(r for r in reproduce.study_runs(False) if r.name == "sd_8x")
    evaluated = compose_config("evaluate", tmp_path / "e", reproduce.evaluate_command("repro", "cpu_short", run)[1:])
    assert evaluated.num_samples == 1000 and evaluated.sampler.steps == 50 and evaluated.quantize == "round"


# == scripts/export.py: Export and deploy ===========================================================
def test_export_and_deploy(quickstart, tmp_path, monkeypatch):
    """The quickstart's checkpoint exported both ways, the diffusers folder scored by evaluate.py, the ONNX
    folder sampled by its own numpy + onnxruntime script in a process that cannot import torch."""
    from spectral_diffusion import SpectralDiffusionPipeline
    from spectral_diffusion.evaluation.fmnist_classifier import FMNISTClassifier

    workdir = quickstart.workdir
    monkeypatch.chdir(workdir)
    _, exported = run_readme(EXPORT_DIFFUSERS, workdir, [])
    assert exported["output"] == "exports/quickstart" and (workdir / "exports/quickstart/unet/config.json").is_file()
    pipe = SpectralDiffusionPipeline.from_pretrained(workdir / "exports/quickstart")
    assert pipe.config.num_inference_steps == 50 and type(pipe.scheduler).__name__ == "DDIMScheduler"
    _, onnx_result = run_readme(EXPORT_ONNX, workdir, [])
    assert onnx_result["denoiser_max_abs_diff"] < 1e-4 and (workdir / "exports/quickstart_onnx/denoiser.onnx").is_file()

    torch.manual_seed(0)  # the offline extractor's architecture with random weights, instead of training it
    classifier = tmp_path / "classifier.pt"
    torch.save(FMNISTClassifier(width=4, num_features=8).state_dict(), classifier)
    cheap = [*TINY_EVAL, f"metrics.fid.weights_path={classifier}", "reference.num_images=16"]
    cheap.append("metrics.throughput.batch_size=2")
    cfg, metrics = run_readme(EVAL_EXPORT, workdir, cheap)
    assert finite(metrics["fd_fmnist"], metrics["gmacs"], metrics["samples_per_s"]) and metrics["weights"] == "ema"
    assert metrics["global_step"] == 2  # the exported checkpoint's, from export.json

    block_torch = "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    args = shlex.split(SAMPLE_ONNX)[1:] + ["--steps", "2"]
    done = subprocess.run([sys.executable, "-c", block_torch, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "16 samples" in done.stdout
    assert Image.open(workdir / "samples.png").size == (4 * (32 + 2) + 2,) * 2  # a 4x4 grid, 2-pixel borders
