"""scripts/export.py: diffusers folders and ONNX graphs of trained models, their parity, and evaluating them.

Tolerances (stated in README.md, "Export and deploy"):
- the diffusers pipeline's images against evaluate.py's sampling (``generate``, ``noise=generators``),
  both in [0, 1]: 1e-5 max abs (the two loops compute the DDIM coefficients in float32 vs float64);
- ONNX Runtime against torch fp32 on random inputs: 1e-4 max abs (``PARITY_TOLERANCE``);
- the numpy + onnxruntime DDIM sampler against the torch one from the same noise: 1e-4 max abs.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluate import evaluate
from spectral_diffusion import SpectralAutoencoderKL, SpectralDiffusionPipeline, SpectralUNet2DModel
from spectral_diffusion.assembly import load_run
from spectral_diffusion.assembly.teachers import diffusers_teacher
from spectral_diffusion.autoencoders import DiffusersAutoencoder, KLAutoencoder, KLFirstStage
from spectral_diffusion.bundles import ModelBundle, diffusion_from_scheduler_config
from spectral_diffusion.deploy import onnx_sampler
from spectral_diffusion.diffusion import DDIMSampler, GaussianDiffusion, sample
from spectral_diffusion.diffusion.noise import CounterNoise
from spectral_diffusion.evaluation.generation import generate
from spectral_diffusion.export import PARITY_TOLERANCE, ExportError, export_diffusers, export_onnx
from spectral_diffusion.networks import UNet
from train import train

from .conftest import CHEAP_METRIC_OVERRIDES, compose_config

REPO = Path(__file__).resolve().parents[1]
PIPELINE_TOLERANCE = 1e-5

_spec = importlib.util.spec_from_file_location("export_script", REPO / "scripts" / "export.py")
_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_script)
export = _script.export


def trained_checkpoint(tmp: Path, fmnist_root: Path, *overrides: str) -> Path:
    base = ["debug=tiny", f"data.root={fmnist_root}", "data.download=false", "callbacks.progress=null", "logger=csv"]
    cfg = compose_config("train", tmp, base + list(overrides))
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def pixel_checkpoint(tmp_path_factory, fmnist_root) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("pixel"), fmnist_root)


@pytest.fixture(scope="module")
def cond_checkpoint(tmp_path_factory, fmnist_root) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("cond"), fmnist_root, "experiment=fmnist_cond", "debug=tiny")


def export_cfg(tmp: Path, ckpt: Path, output: Path, *overrides: str):
    return compose_config("export", tmp, [f"ckpt_path={ckpt}", f"output={output}", *overrides])


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (a 4-step run's zero-initialised output layer would hide differences)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return module


def unet_kwargs(image_size: int, channels: int, num_classes: int | None = None) -> dict:
    return {
        "_target_": "spectral_diffusion.networks.UNet",
        "image_size": image_size,
        "in_channels": channels,
        "base_channels": 8,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [image_size // 2],
        "head_channels": 8,
        "num_classes": num_classes,
        "downsample": "wavelet_gated",
        "upsample": "wavelet_gated",
        "downsample_options": {"wavelet": "haar", "reduction": 4, "gate_init": "lowpass"},
        "upsample_options": {"wavelet": "haar", "reduction": 4, "gate_init": "lowpass"},
    }


def latent_bundle(tmp: Path, kind: str) -> ModelBundle:
    """A class-conditional latent student with random weights, on the framework's KL autoencoder or a diffusers one."""
    torch.manual_seed(0)
    if kind == "framework":
        first_stage = KLFirstStage(
            randomize(KLAutoencoder(in_channels=1, base_channels=8, latent_channels=3, head_channels=8), 1)
        )
    else:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(
            in_channels=1, out_channels=1, latent_channels=3, block_out_channels=(8, 8, 8), norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        )  # fmt: skip
        vae.save_pretrained(tmp / "vae_source")
        first_stage = DiffusersAutoencoder(str(tmp / "vae_source"))
    first_stage.set_latent_stats([0.1, -0.2, 0.3], [1.5, 0.5, 2.0])
    model = unet_kwargs(8, 3, num_classes=4)
    network = randomize(UNet(**{k: v for k, v in model.items() if k != "_target_"}), 2).eval()
    diffusion = {
        "_target_": "spectral_diffusion.diffusion.GaussianDiffusion",
        "schedule": "cosine",
        "prediction_type": "eps",
    }
    return ModelBundle(
        network=network,
        diffusion=GaussianDiffusion("cosine", prediction_type="eps"),
        first_stage=first_stage,
        shape=(3, 8, 8),
        num_classes=4,
        source=f"checkpoint:{tmp / 'latent.ckpt'}",
        weights="ema",
        config={"model": model, "diffusion": diffusion},
    ).freeze()


def pipeline_images(folder: Path, seed: int, count: int, steps: int, **kwargs) -> torch.Tensor:
    pipe = SpectralDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    return pipe(batch_size=count, generator=generators, num_inference_steps=steps, output_type="pt", **kwargs).images


def evaluate_images(bundle: ModelBundle, sampler, seed: int, count: int, guidance=None) -> torch.Tensor:
    _, images = next(generate(bundle, sampler, range(count), seed, count, "cpu", guidance, noise="generators"))
    return (images / 2 + 0.5).clamp(0, 1)


# -- diffusers format ---------------------------------------------------------------------------------


def test_pixel_export_round_trips_through_diffusers(pixel_checkpoint, tmp_path):
    output = tmp_path / "fmnist_tiny"
    export(export_cfg(tmp_path, pixel_checkpoint, output))
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", "spectral_diffusion_config.json", "export.json", "README.md"):  # fmt: skip
        assert (output / name).is_file(), name
    assert not list(output.rglob("*.bin")) and not list(output.rglob("*.py"))  # safetensors only, no code

    original = load_run(pixel_checkpoint)  # EMA weights
    unet = SpectralUNet2DModel.from_pretrained(output / "unet")
    assert unet.state_dict().keys() == {f"net.{k}" for k in original.network.state_dict()}
    assert all(torch.equal(unet.net.state_dict()[k], v) for k, v in original.network.state_dict().items())

    scheduler = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["clip_sample"] is True
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["timestep_spacing"] == "leading"
    process = diffusion_from_scheduler_config(scheduler)
    assert torch.equal(process.alphas_cumprod, original.diffusion.alphas_cumprod)
    index = json.loads((output / "model_index.json").read_text())
    assert index["_class_name"] == "SpectralDiffusionPipeline" and index["num_inference_steps"] == 50
    assert index["eta"] == 1.0 and index["vae"] == [None, None]

    # save_pretrained / from_pretrained: a second round trip changes nothing.
    pipe = SpectralDiffusionPipeline.from_pretrained(output)
    pipe.save_pretrained(tmp_path / "again")
    again = SpectralDiffusionPipeline.from_pretrained(tmp_path / "again")
    assert all(torch.equal(again.unet.state_dict()[k], v) for k, v in pipe.unet.state_dict().items())
    assert again.scheduler.config == pipe.scheduler.config

    card = (output / "README.md").read_text()
    record = json.loads((output / "export.json").read_text())
    assert card.startswith("---\nlibrary_name: diffusers") and "Not measured at export" in card
    assert f"| parameters (M) | {record['cost']['params_m']:.3f} |" in card and record["weights"] == "ema"
    assert f"| GMACs per forward pass | {record['cost']['gmacs']:.4f} |" in card and record["global_step"] == 4


def test_pipeline_samples_equal_evaluate_py(pixel_checkpoint, tmp_path):
    bundle = load_run(pixel_checkpoint)
    randomize(bundle.network)  # the same random weights into both, so the comparison sees a real network
    sampler = DDIMSampler(bundle.diffusion, steps=8, eta=1.0, clip_sample=True)
    output = export_diffusers(bundle, sampler, tmp_path / "export")
    ours = evaluate_images(bundle, sampler, seed=5, count=3)
    theirs = pipeline_images(output, seed=5, count=3, steps=8)
    assert theirs.shape == (3, 1, 32, 32) and ours.std() > 0.05
    assert (ours - theirs).abs().max() < PIPELINE_TOLERANCE


def test_class_conditional_pipeline_with_guidance_equals_evaluate_py(cond_checkpoint, tmp_path):
    bundle = load_run(cond_checkpoint)
    randomize(bundle.network, 3)
    sampler = DDIMSampler(bundle.diffusion, steps=6, eta=0.5, clip_sample=True)
    output = export_diffusers(bundle, sampler, tmp_path / "cond")
    ours = evaluate_images(bundle, sampler, seed=0, count=4, guidance=2.5)
    labels = [i % 10 for i in range(4)]  # evaluate.py's label of sample i
    theirs = pipeline_images(output, seed=0, count=4, steps=6, class_labels=labels, guidance_scale=2.5)
    assert (ours - theirs).abs().max() < PIPELINE_TOLERANCE
    with pytest.raises(ValueError, match="class_labels"):
        SpectralDiffusionPipeline.from_pretrained(output)(batch_size=2)


@pytest.mark.parametrize("kind", ["framework", "diffusers"])
def test_latent_export_round_trip_and_pipeline(kind, tmp_path):
    bundle = latent_bundle(tmp_path, kind)
    sampler = DDIMSampler(bundle.diffusion, steps=5, eta=1.0, clip_sample=False)
    output = export_diffusers(bundle, sampler, tmp_path / "latent")
    vae_class = json.loads((output / "vae" / "config.json").read_text())["_class_name"]
    assert vae_class == ("SpectralAutoencoderKL" if kind == "framework" else "AutoencoderKL")
    index = json.loads((output / "model_index.json").read_text())
    assert index["latent_shift"] == pytest.approx([0.1, -0.2, 0.3]) and index["latent_scale"] == [1.5, 0.5, 2.0]

    # The framework reads the folder back: same network, same first stage with its statistics.
    loaded = load_run(output)
    assert loaded.num_classes == 4 and loaded.shape == (3, 8, 8) and loaded.weights == "ema"
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loaded.decode(z), bundle.decode(z), atol=1e-6)
    x = torch.randn(2, 3, 8, 8)
    t, y = torch.tensor([3, 700]), torch.tensor([0, 4])
    assert torch.equal(loaded.network(x, t, y), bundle.network(x, t, y))

    ours = evaluate_images(bundle, sampler, seed=2, count=3)
    theirs = pipeline_images(output, seed=2, count=3, steps=5, class_labels=[0, 1, 2])
    assert theirs.shape == (3, 1, 32, 32) and (ours - theirs).abs().max() < PIPELINE_TOLERANCE
    if kind == "framework":
        assert isinstance(SpectralDiffusionPipeline.from_pretrained(output).vae, SpectralAutoencoderKL)


def test_exported_student_serves_as_a_diffusers_teacher(pixel_checkpoint, tmp_path):
    output = tmp_path / "student"
    export(export_cfg(tmp_path, pixel_checkpoint, output))
    teacher = diffusers_teacher(str(output))
    original = load_run(pixel_checkpoint)
    assert len(teacher.feature_points()) == len(original.network.up_levels)  # feature distillation finds its levels
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 500])
    assert torch.equal(teacher(x, t), original.network(x, t))
    assert teacher.prediction_type == "v" and teacher.input_shape == (1, 32, 32)


def test_a_student_distils_from_an_exported_student(pixel_checkpoint, train_cfg, tmp_path):
    """teacher=diffusers on an exported folder, through train.py, with the features and frequency terms."""
    from .test_distillation import run_distillation

    output = tmp_path / "teacher"
    export(export_cfg(tmp_path, pixel_checkpoint, output))
    cfg, ckpt = run_distillation(train_cfg, "teacher=diffusers", f"teacher.path={output}", "diffusion=linear_v")
    assert ckpt["global_step"] == cfg.trainer.max_steps
    assert ckpt["spectral_diffusion"]["teacher"]["source"] == f"diffusers:{output}"
    assert any(k.startswith("loss.adapters.") for k in ckpt["state_dict"])  # decoder features were paired
    metrics = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text()
    assert "train/spatial" in metrics and "train/freq" in metrics


# -- ONNX ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, cond_checkpoint):
    """A class-conditional pixel model with random weights, exported to ONNX, and the bundle it came from."""
    tmp = tmp_path_factory.mktemp("onnx")
    bundle = load_run(cond_checkpoint)
    randomize(bundle.network, 4)
    sampler = DDIMSampler(bundle.diffusion, steps=4, eta=1.0, clip_sample=True)
    output, parity = export_onnx(bundle, sampler, tmp / "onnx")
    return bundle, sampler, output, parity


def test_onnx_graph_matches_torch_with_a_dynamic_batch(onnx_export):
    import onnx
    import onnxruntime as ort

    bundle, _, output, parity = onnx_export
    graph = onnx.load(str(output / "denoiser.onnx"))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["sample", "timestep", "class_labels"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(output / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 1, 32, 32, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        y = torch.randint(0, 11, (batch,), generator=gen)
        with torch.no_grad():
            ours = bundle.network(x, t, y)
        theirs = session.run(None, {"sample": x.numpy(), "timestep": t.numpy(), "class_labels": y.numpy()})[0]
        assert ours.abs().max() > 0.5 and np.abs(theirs - ours.numpy()).max() < PARITY_TOLERANCE
    assert parity["denoiser_max_abs_diff"] < PARITY_TOLERANCE
    record = json.loads((output / "export.json").read_text())
    assert record["format"] == "onnx" and record["parity"] == parity


class Replay(CounterNoise):
    """Hands the torch sampler, draw by draw, the step noise the numpy sampler drew."""

    def __init__(self, recorded: list[np.ndarray]) -> None:
        super().__init__(0, range(3))
        self.recorded = list(recorded)

    def randn(self, shape, device="cpu", dtype=torch.float32):
        return torch.from_numpy(self.recorded.pop(0))


def test_numpy_sampler_takes_the_torch_samplers_steps(onnx_export):
    bundle, sampler, output, _ = onnx_export
    model = onnx_sampler.OnnxDiffusionModel(output)
    noise = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    labels = np.array([0, 5, 10])  # 10: the null label
    for eta in (0.0, 1.0):
        draws: list[np.ndarray] = []
        rng = np.random.default_rng(1)

        def draw(shape, rng=rng, draws=draws):
            draws.append(rng.standard_normal(shape).astype(np.float32))
            return draws[-1]

        ours = onnx_sampler.ddim_sample_latents(model, noise, labels, steps=4, eta=eta, draw=draw)

        replay = Replay(draws)
        torch_sampler = DDIMSampler(bundle.diffusion, steps=4, eta=eta, clip_sample=True)
        theirs = sample(bundle.network, torch_sampler, (3, 1, 32, 32), replay, noise=torch.from_numpy(noise),
                        class_labels=torch.from_numpy(labels))  # fmt: skip
        assert len(draws) == (3 if eta else 0) and replay.recorded == []  # the last step (to alpha_bar 1) draws none
        assert np.abs(ours - theirs.numpy()).max() < 1e-4, eta


def test_numpy_sampler_runs_without_torch(onnx_export, tmp_path):
    _, _, output, _ = onnx_export
    block_torch = "import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "
    script = output / "sample_onnx.py"
    run = f"{block_torch}sys.argv = ['sample_onnx.py', '{output}', '--num-samples', '3', '--steps', '2', '--out', '{tmp_path / 'g.png'}']; exec(open('{script}').read())"
    done = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "g.png").is_file() and "3 samples" in done.stdout
    model = onnx_sampler.OnnxDiffusionModel(output)
    first = onnx_sampler.generate(model, 3, seed=7, steps=2, batch_size=3)
    split = np.concatenate([onnx_sampler.generate(model, 1, seed=7, steps=2, first_index=i) for i in range(3)])
    assert first.dtype == np.uint8 and first.shape == (3, 32, 32, 1)
    assert np.array_equal(first, split)  # sample i does not depend on its batch


def test_latent_onnx_export_includes_the_decoder(tmp_path):
    bundle = latent_bundle(tmp_path, "framework")
    output, parity = export_onnx(bundle, DDIMSampler(bundle.diffusion, steps=3), tmp_path / "onnx")
    assert parity["decoder_max_abs_diff"] < PARITY_TOLERANCE
    model = onnx_sampler.OnnxDiffusionModel(output)
    z = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.abs(model.decode(z) - bundle.decode(torch.from_numpy(z)).numpy()).max() < PARITY_TOLERANCE
    assert onnx_sampler.generate(model, 2, steps=2).shape == (2, 32, 32, 1)


# -- evaluating an exported folder --------------------------------------------------------------------


def test_evaluating_the_export_equals_evaluating_the_checkpoint(pixel_checkpoint, fmnist_root, tmp_path):
    output = tmp_path / "export"
    export(export_cfg(tmp_path, pixel_checkpoint, output))
    torch.manual_seed(0)
    classifier = tmp_path / "classifier.pt"
    from spectral_diffusion.evaluation.fmnist_classifier import FMNISTClassifier

    torch.save(FMNISTClassifier(width=4, num_features=8).state_dict(), classifier)
    common = [
        "metrics=[fid,kid,macs,params]", "metrics.fid.feature_extractor=fmnist_classifier",
        f"metrics.fid.weights_path={classifier}", *CHEAP_METRIC_OVERRIDES[:2], "num_samples=6", "batch_size=3",
        "grid_samples=0", "sampler.steps=3", "reference.split=val",
        f"reference.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    # No data= on the command line: both find the run's data set, the folder in spectral_diffusion_config.json.
    of_checkpoint = evaluate(compose_config("evaluate", tmp_path / "a", [f"ckpt_path={pixel_checkpoint}", *common]))
    of_folder = evaluate(compose_config("evaluate", tmp_path / "b", [f"ckpt_path={output}", *common]))
    for key in ("fd_fmnist", "kd_fmnist_mean", "kd_fmnist_std", "gmacs", "params_m", "gmacs_per_sample"):
        assert of_folder[key] == of_checkpoint[key], key
    assert of_folder["weights"] == "ema" and of_folder["protocol"]["weights"] == of_checkpoint["protocol"]["weights"]

    # The model card quotes a metrics.json of this checkpoint, and refuses one of another model.
    metrics_file = tmp_path / "a" / "run" / "metrics.json"
    export(export_cfg(tmp_path, pixel_checkpoint, tmp_path / "carded", f"metrics_json={metrics_file}"))
    card = (tmp_path / "carded" / "README.md").read_text()
    assert f"| fd_fmnist | {of_checkpoint['fd_fmnist']:.4g} |" in card and "| kd_fmnist_mean |" in card
    assert '"metric_key": "fd_fmnist"' in card and "Measured by `evaluate.py`" in card
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**json.loads(metrics_file.read_text()), "ckpt_path": "/elsewhere/last.ckpt"}))
    with pytest.raises(ExportError, match="scores /elsewhere/last.ckpt, not the exported checkpoint"):
        export(export_cfg(tmp_path, pixel_checkpoint, tmp_path / "x", f"metrics_json={other}"))


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_exports_are_refused_with_one_message(pixel_checkpoint, tmp_path):
    with pytest.raises(ExportError, match=r"format='tflite' is not one of \['diffusers', 'onnx'\]"):
        export(export_cfg(tmp_path, pixel_checkpoint, tmp_path / "o", "format=tflite"))

    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not empty.*overwrite=true"):
        export(export_cfg(tmp_path, pixel_checkpoint, mine))
    with pytest.raises(ExportError, match="was not written by an export"):
        export(export_cfg(tmp_path, pixel_checkpoint, mine, "overwrite=true"))
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1

    # overwrite=true replaces an earlier export, and leaves no staging folder behind.
    done = tmp_path / "done"
    export(export_cfg(tmp_path, pixel_checkpoint, done))
    export(export_cfg(tmp_path, pixel_checkpoint, done, "overwrite=true", "format=onnx"))
    assert (done / "denoiser.onnx").is_file() and not (done / "unet").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    stripped = tmp_path / "stripped.ckpt"
    checkpoint = torch.load(pixel_checkpoint, weights_only=True)
    checkpoint.pop("spectral_diffusion", None)  # utils/checkpoint.py: METADATA_KEY, where the run config lives
    checkpoint.pop("hyper_parameters", None)
    torch.save(checkpoint, stripped)
    with pytest.raises(ExportError, match="holds no stored run config"):
        export(export_cfg(tmp_path, stripped, tmp_path / "s"))


def test_the_command_line_prints_one_message(pixel_checkpoint, tmp_path):
    done = subprocess.run(
        [sys.executable, "scripts/export.py", f"ckpt_path={pixel_checkpoint}", f"output={tmp_path / 'o'}",
         "format=bogus", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "format='bogus' is not one of ['diffusers', 'onnx']" in done.stderr


def test_a_crafted_export_folder_runs_no_code(pixel_checkpoint, tmp_path):
    """An exported folder is untrusted input, like a checkpoint: its run config and component configs are checked."""
    from spectral_diffusion.bundles import DiffusersLoadError
    from spectral_diffusion.utils.stored_config import StoredConfigError

    output = tmp_path / "crafted"
    export(export_cfg(tmp_path, pixel_checkpoint, output))
    canary = tmp_path / "canary"
    run_config = json.loads((output / "spectral_diffusion_config.json").read_text())
    run_config["data"] = {"_target_": "builtins.open", "file": str(canary), "mode": "w"}
    (output / "spectral_diffusion_config.json").write_text(json.dumps(run_config))
    with pytest.raises(StoredConfigError, match="builtins.open"):
        load_run(output)
    run_config.pop("data")
    (output / "spectral_diffusion_config.json").write_text(json.dumps(run_config))
    unet_config = json.loads((output / "unet" / "config.json").read_text())
    (output / "unet" / "config.json").write_text(json.dumps({**unet_config, "auto_map": {"x": "evil.Evil"}}))
    with pytest.raises(DiffusersLoadError, match=r"asks for custom code \(auto_map\)"):
        load_run(output)
    assert not canary.exists()
