"""Evaluate a checkpoint or a model preset: quality, cost, speed and a spectral report.

    python evaluate.py ckpt_path=PATH metrics=[fid,kid,macs,params,throughput,spectral]
    python evaluate.py model=PRESET                            # cost of a preset, no checkpoint
    python evaluate.py mode=reference data=NAME metrics=[fid]  # compute and cache reference statistics

- A checkpoint's network is rebuilt from the config stored in it (or ``model=PRESET``, which must
  fit the weights) and loaded with ``weights_only=True``, with the **EMA weights by default**
  (``use_ema=false`` for the raw ones; ``weights`` in metrics.json says which were used).
- Metrics are picked from ``configs/metrics/`` and computed in ``spectral_diffusion/evaluation/``;
  ``teacher=...`` adds the teacher's numbers and the student/teacher ratios.
- ``metrics.json`` (keys in ``docs/evaluation.md``), ``samples.png`` and, with ``spectral``,
  ``spectral_report.{json,png}`` go to the run directory ``logs/evaluate/<run_name>``; a table is
  printed. Under ``torch.distributed`` every rank generates its share and rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from spectral_diffusion.assembly import ConfigError, build_network, build_sampler, build_teacher, load_run, stored_data
from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance
from spectral_diffusion.evaluation import spectral_report
from spectral_diffusion.evaluation.distributed import world
from spectral_diffusion.evaluation.extractors import build_feature_extractor
from spectral_diffusion.evaluation.generation import NOISE_KINDS, describe_noise, generate
from spectral_diffusion.evaluation.guidance_sweep import guidance_sweep
from spectral_diffusion.evaluation.metrics import (
    cost_metrics,
    generated_features,
    quality_metrics,
    student_over_teacher,
)
from spectral_diffusion.evaluation.reference import reference_features
from spectral_diffusion.evaluation.throughput import measure_throughput
from spectral_diffusion.utils.cli import report_user_errors, run
from spectral_diffusion.utils.images import QUANTIZATIONS, save_grid, to_uint8
from spectral_diffusion.utils.run import git_revision, register_resolvers, task_wrapper

log = logging.getLogger("evaluate")
register_resolvers()

COST_KEYS = {
    "params": ("params_m", "first_stage_params_m"),
    "macs": (
        "gmacs",
        "gmacs_attention_products",
        "network_calls_per_sample",
        "gmacs_per_sample",
        "gmacs_decoder",
        "gmacs_per_sample_total",
    ),
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def print_table(metrics: dict[str, Any]) -> None:
    """Scalars, one per line; nested dicts (teacher, ratios) with their name as prefix."""
    rows: list[tuple[str, str]] = []
    for key, value in metrics.items():
        if key == "protocol":
            continue
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, item in items:
            if isinstance(item, (dict, list)):
                continue
            shown = f"{item:.4f}" if isinstance(item, float) else str(item)
            rows.append((f"{key}/{sub}" if sub else key, shown))
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 24))
    for key, shown in rows:
        print(f"{key:<{width}}  {shown}")
    print("-" * (width + 24))


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def feature_options(cfg: DictConfig) -> DictConfig:
    """The extractor settings: metrics.fid's, else metrics.kid's, else Inception's defaults."""
    selected = cfg.get("metrics") or {}
    for name in ("fid", "kid"):
        if name in selected:
            return selected[name]
    return OmegaConf.create({"feature_extractor": "inception", "weights_path": None, "batch_size": 64})


def data_source(cfg: DictConfig, model: ModelBundle | None) -> tuple[DictConfig, Any]:
    """``(data config, DataModule)``: ``data=...`` as composed, else the checkpoint's stored data config,
    rebuilt from the registry (``assembly/load.py: stored_data``) since the checkpoint is untrusted."""
    if cfg.get("data") is not None:
        return cfg.data, hydra.utils.instantiate(cfg.data)
    datamodule = stored_data(model) if model is not None else None
    if datamodule is None:
        raise ConfigError("no data config: give data=NAME (see configs/data/), e.g. data=fashion_mnist")
    return OmegaConf.create(model.config["data"]), datamodule


def build_guidance(cfg: DictConfig) -> ClassifierFreeGuidance | None:
    """Classifier-free guidance from ``guidance=`` (``None`` when unset)."""
    return hydra.utils.instantiate(cfg.guidance) if cfg.get("guidance") is not None else None


def load_model(cfg: DictConfig, device: torch.device) -> tuple[ModelBundle, bool]:
    """The model to evaluate and whether it came from a checkpoint."""
    if cfg.get("ckpt_path"):
        return load_run(cfg.ckpt_path, cfg.use_ema, cfg.get("model")).to(device), True
    if cfg.get("model") is not None:
        net = build_network(cfg.model).to(device).eval()
        shape = (net.in_channels, net.image_size, net.image_size)
        return ModelBundle(net, None, None, shape, getattr(net, "num_classes", None)), False
    raise ConfigError("nothing to evaluate: give ckpt_path=PATH, or model=PRESET (see configs/model/)")


def reference_for(cfg: DictConfig, model: ModelBundle | None, extractor: torch.nn.Module) -> tuple[Any, Path, bool]:
    """The cached (or newly computed) reference features of the data, as ``reference.*`` configures them."""
    data_cfg, datamodule = data_source(cfg, model)
    return reference_features(
        data_cfg,
        extractor,
        cfg.reference.cache_dir,
        cfg.reference.split,
        cfg.reference.num_images,
        cfg.reference.batch_size,
        datamodule=datamodule,
    )


def run_reference(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """``mode=reference``: compute (or find) the reference statistics of ``data=`` and say where they are."""
    options = feature_options(cfg)
    extractor = build_feature_extractor(options.feature_extractor, options.weights_path, device, options.batch_size)
    reference, path, computed = reference_for(cfg, None, extractor)
    result = {
        "reference_stats": str(path),
        "computed": computed,
        "num_images": reference.stats.count,
        "feature_extractor": extractor.identity,
        "split": cfg.reference.split,
    }
    print_table(result)
    return result


def measure(
    cfg: DictConfig,
    model: ModelBundle,
    device: torch.device,
    output_dir: Path,
    prefix: str,
    reference_cache: dict[str, Any],
) -> dict[str, Any]:
    """Every selected metric of one model (the student, or the teacher with ``prefix='teacher_'``)."""
    selected = cfg.get("metrics") or {}
    guidance = build_guidance(cfg)
    sampler = build_sampler(cfg.sampler, model.diffusion) if model.diffusion is not None else None
    metrics: dict[str, Any] = {}
    if {"params", "macs"} & set(selected):
        cost = cost_metrics(model, sampler, guidance, device)
        for group, keys in COST_KEYS.items():
            if group in selected:
                metrics.update({k: cost[k] for k in keys if k in cost})

    needs_sampling = {"fid", "kid", "throughput"} & set(selected) or cfg.grid_samples > 0
    if needs_sampling and sampler is None:
        if {"fid", "kid", "throughput"} & set(selected):
            raise ConfigError("fid, kid and throughput need a checkpoint to sample from: give ckpt_path=PATH")
        return metrics

    grid = None
    if {"fid", "kid"} & set(selected):
        options = feature_options(cfg)
        if "extractor" not in reference_cache:
            reference_cache["extractor"] = build_feature_extractor(
                options.feature_extractor, options.weights_path, device, options.batch_size
            )
        extractor = reference_cache["extractor"]
        if "reference" not in reference_cache:
            reference_cache["reference"] = reference_for(cfg, model, extractor)
        reference, _, _ = reference_cache["reference"]
        generated, grid, seconds = generated_features(
            model,
            sampler,
            extractor,
            cfg.num_samples,
            cfg.seed,
            cfg.batch_size,
            device,
            guidance,
            keep_features="kid" in selected,
            grid_samples=cfg.grid_samples,
            noise=cfg.noise,
            quantize=cfg.quantize,
        )
        metrics.update(
            quality_metrics(generated, reference, extractor, "fid" in selected, selected.get("kid"), cfg.seed)
        )
        metrics["generation_s"] = seconds
    elif cfg.grid_samples > 0 and world()[0] == 0:
        batches = generate(
            model, sampler, range(cfg.grid_samples), cfg.seed, cfg.batch_size, device, guidance, noise=cfg.noise
        )
        grid = torch.cat([images.cpu() for _, images in batches])
    if grid is not None and world()[0] == 0:
        metrics["samples_png"] = str(save_grid(grid, output_dir / f"{prefix}samples.png", scale=2))

    if "throughput" in selected:
        options = selected.throughput
        metrics.update(
            measure_throughput(model, sampler, options.batch_size, device, options.repeats, options.warmup, guidance)
        )
    return metrics


def run_label(source: str) -> str:
    """A short name for a model: the run directory of ``<run>/checkpoints/last.ckpt``, else the source."""
    path = Path(source.removeprefix("checkpoint:"))
    return path.parents[1].name if path.parent.name == "checkpoints" else path.name


def run_spectral(
    cfg: DictConfig, student: ModelBundle, teacher: ModelBundle | None, device: torch.device, output_dir: Path
) -> dict[str, Any]:
    """The spectral report of the student (and teacher): JSON and PNG in the run directory."""
    options = cfg.metrics.spectral
    if student.diffusion is None:
        raise ConfigError("spectral needs a checkpoint (its diffusion process): give ckpt_path=PATH")
    images, labels = spectral_report.held_out_images(data_source(cfg, student)[1], options.num_images, options.split)
    x0 = torch.cat([student.encode(chunk.to(device)).cpu() for chunk in images.split(options.batch_size)])
    models = {"student": student} | ({"teacher": teacher} if teacher is not None else {})
    report = spectral_report.spectral_errors(
        models,
        x0,
        list(options.timesteps),
        labels if student.class_conditional else None,
        options.num_bands,
        options.seed,
        options.batch_size,
        device,
        options.threshold,
        float(options.clip_x0_range) if options.clip_x0 else None,
    )
    report["space"] = "latent" if student.first_stage is not None else "pixel"
    report["sources"] = {name: model.source for name, model in models.items()}
    json_path = spectral_report.write_json(report, output_dir / "spectral_report.json")
    title = f"{run_label(student.source)}" + (f" vs teacher {run_label(teacher.source)}" if teacher else "")
    title += f": {report['num_images']} held-out images, {report['space']} space"
    png_path = spectral_report.plot_report(report, output_dir / "spectral_report.png", title)
    print(spectral_report.log_band_summary(report))
    return {"spectral_report_json": str(json_path), "spectral_report_png": str(png_path)}


def protocol(cfg: DictConfig, model: ModelBundle, reference_cache: dict[str, Any], device: torch.device) -> dict:
    """How the numbers were made: implementation and versions, resize, samples, reference, sampler."""
    sampler = cfg.sampler
    record: dict[str, Any] = {
        "implementation": "spectral_diffusion.evaluation (float64 feature statistics; matrix square root "
        "in float64 on the CPU via symmetric eigendecompositions)",
        "versions": {
            "torch": torch.__version__,
            "torchmetrics": package_version("torchmetrics"),
            "torch-fidelity": package_version("torch-fidelity"),
            "spectral_diffusion_commit": git_revision()["commit"],
        },
        "weights": model.weights or None,
        "sampler": str(sampler._target_).rsplit(".", 1)[-1],
        "steps": int(sampler.steps),
        "eta": float(sampler.eta) if "eta" in sampler else None,
        "guidance_scale": float(cfg.guidance.scale) if cfg.get("guidance") is not None else 1.0,
        "guidance": OmegaConf.to_container(cfg.guidance, resolve=True) if cfg.get("guidance") is not None else None,
        "seed": int(cfg.seed),
        "noise": str(cfg.noise),
        "quantize": str(cfg.quantize),
        "seeding": describe_noise(cfg.noise),
        "batch_size": int(cfg.batch_size),
        "world_size": world()[1],
        "device": str(device),
    }
    if "extractor" in reference_cache:
        extractor = reference_cache["extractor"]
        reference, path, _ = reference_cache["reference"]
        record.update(
            {
                "feature_extractor": extractor.identity,
                "metric_key": extractor.metric_key,
                "resize": extractor.resize,
                "num_samples": int(cfg.num_samples),
                "reference": {
                    "file": str(path),
                    "split": reference.stats.metadata.get("split"),
                    "num_images": reference.stats.count,
                    "data": reference.stats.metadata.get("data", {}).get("_target_"),
                },
            }
        )
    return record


class GeneratedImageFeatures(torch.nn.Module):
    """The extractor applied to generated images as to real ones: quantised to uint8 first."""

    def __init__(self, extractor: torch.nn.Module, quantize: str = "round") -> None:
        super().__init__()
        self.extractor = extractor
        self.identity = extractor.identity
        self.quantize = quantize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(to_uint8(images, self.quantize))


def run_guidance_sweep(cfg: DictConfig, device: torch.device, output_dir: Path) -> dict[str, Any]:
    """``mode=guidance_sweep``: FD, class accuracy and samples/s against ``sweep.cutoffs``.

    Each cut-off is a ``guidance.truncate_after``; the other guidance settings come from ``guidance=``.
    Class accuracy needs a classifier, so it is reported with ``feature_extractor=fmnist_classifier``.
    """
    model, _ = load_model(cfg, device)
    if not model.class_conditional:
        raise ConfigError(
            f"mode=guidance_sweep needs a class-conditional model; {model.source} has no classes "
            "(train one with experiment=fmnist_cond)"
        )
    options = feature_options(cfg)
    extractor = build_feature_extractor(options.feature_extractor, options.weights_path, device, options.batch_size)
    reference, path, _ = reference_for(cfg, model, extractor)
    # The offline classifier's logits give the class accuracy; Inception has no Fashion-MNIST classes.
    fmnist = getattr(extractor, "classifier", None)
    classifier = fmnist.classifier if fmnist is not None else None
    if cfg.num_samples > 10_000:
        log.warning(
            "mode=guidance_sweep generates num_samples=%d per cut-off; set num_samples=2000 or so for a quicker sweep",
            cfg.num_samples,
        )
    rows = guidance_sweep(
        model.network,
        build_sampler(cfg.sampler, model.diffusion),
        model.shape,
        model.num_classes,
        GeneratedImageFeatures(extractor, cfg.quantize),
        reference.stats,
        classifier,
        cutoffs=list(cfg.sweep.cutoffs),
        scale=cfg.guidance.scale,
        after=cfg.guidance.after,
        batch_cond_uncond=cfg.guidance.get("batch_cond_uncond", False),
        num_samples=cfg.num_samples,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=device,
        decode=model.decode if model.first_stage is not None else None,
        output_dir=output_dir,
    )
    result = {"ckpt_path": model.source.removeprefix("checkpoint:"), "reference_stats": str(path), "rows": rows}
    if world()[0] == 0:
        (output_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", output_dir / "guidance_sweep.md")
    return result


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation described by ``cfg`` and return the metrics written to ``metrics.json``."""
    if cfg.quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize={cfg.quantize!r} must be one of {', '.join(QUANTIZATIONS)}")
    if cfg.noise not in NOISE_KINDS:
        raise ConfigError(f"noise={cfg.noise!r} must be one of {', '.join(NOISE_KINDS)}")
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.mode == "reference":
        return run_reference(cfg, device)
    if cfg.mode == "guidance_sweep":
        return run_guidance_sweep(cfg, device, output_dir)
    if cfg.mode != "evaluate":
        raise ConfigError(f"mode={cfg.mode!r} must be evaluate, reference or guidance_sweep")

    model, from_checkpoint = load_model(cfg, device)
    metrics: dict[str, Any] = {
        "model": type(getattr(model.network, "net", model.network)).__name__,
        "input_shape": "x".join(map(str, model.shape)),
    }
    if model.first_stage is not None:
        metrics["first_stage"] = model.first_stage.describe()["kind"]
    if from_checkpoint:
        metrics |= {
            "ckpt_path": model.source.removeprefix("checkpoint:"),
            "global_step": model.global_step,
            "weights": model.weights,
        }
        log.info("using the %s weights of %s", "EMA" if model.weights == "ema" else "raw", model.source)
    reference_cache: dict[str, Any] = {}
    metrics |= measure(cfg, model, device, output_dir, "", reference_cache)

    teacher = build_teacher(cfg.get("teacher"))
    # Sampled through the Teacher itself, which answers in the input's dtype (a bfloat16 teacher too).
    teacher = dataclasses.replace(teacher.bundle, network=teacher).to(device) if teacher is not None else None
    if teacher is not None:
        metrics["teacher"] = {"source": teacher.source} | measure(
            cfg, teacher, device, output_dir, "teacher_", reference_cache
        )
        metrics["student_over_teacher"] = student_over_teacher(metrics, metrics["teacher"])
    if "spectral" in (cfg.get("metrics") or {}):
        metrics |= run_spectral(cfg, model, teacher, device, output_dir)
    if from_checkpoint:
        metrics["protocol"] = protocol(cfg, model, reference_cache, device)
    metrics["device"] = str(device)
    metrics["git_commit"] = git_revision()["commit"]
    if world()[0] == 0:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print_table(metrics)
        log.info("wrote %s", output_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
@report_user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    run(main)
