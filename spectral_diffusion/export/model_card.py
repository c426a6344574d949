"""The README.md model card of an exported model: what it is, what it costs, how good it is, how it was made.

Hugging Face reads the YAML front matter (library, pipeline tag, tags); the body gives the
parameters and GMACs measured at export, the FD/FID of an ``evaluate.py`` run of the same
checkpoint with its whole protocol record (extractor, samples, sampler, reference), the teacher and
the training config. A quality figure is quoted only from a metrics.json whose checkpoint is the
exported one (``export/diffusers_export.py: checked_quality`` checks that); without one the card says it was not measured.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from spectral_diffusion.bundles import ModelBundle

#: Prefixes of the metrics.json keys the card quotes: FID or the FD of another extractor (``fd_fmnist``),
#: KID or KD, and the measured sampling speed.
QUALITY_PREFIXES = ("fid", "fd", "kid", "kd_", "samples_per_s")


def _fence(text: str, language: str = "") -> str:
    return f"```{language}\n{text.rstrip()}\n```"


def _teacher_line(config: dict[str, Any]) -> str:
    teacher = config.get("teacher") or {}
    target = str(teacher.get("_target_", ""))
    if not target:
        return "none (trained on the data alone)"
    where = teacher.get("ckpt_path") or teacher.get("path") or "?"
    kind = "diffusers model" if target.endswith("diffusers_teacher") else "framework checkpoint"
    return f"{kind} `{where}`"


def model_card(
    name: str,
    bundle: ModelBundle,
    cost: dict[str, Any],
    sampling: dict[str, Any],
    usage: str,
    quality: dict[str, Any] | None = None,
    location: str | None = None,
) -> str:
    """The card's markdown.

    Args:
        name: the model's name (the export folder's).
        bundle: the exported model (its stored config is the training config).
        cost: ``evaluation/metrics.py: cost_metrics`` of the model with the exported sampler.
        sampling: the exported sampler: diffusers scheduler class, steps, eta.
        usage: a code block showing how to load and sample.
        quality: a checked metrics.json of the same checkpoint, or ``None``.
        location: where the folder is written (for the evaluate.py command), default ``name``.
    """
    config = bundle.config or {}
    conditional = bundle.class_conditional
    pipeline_tag = "unconditional-image-generation"
    tags = ["spectral-diffusion", "diffusion", "wavelet-gating", "knowledge-distillation"]
    if conditional:
        tags.append("class-conditional")
    model = config.get("model") or {}
    front = {"library_name": "diffusers", "pipeline_tag": pipeline_tag, "tags": tags}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {name}", ""]
    resampling = f"{model.get('downsample', '?')} / {model.get('upsample', '?')}"
    lines += [
        f"A diffusion model trained with spectral-diffusion (source `{bundle.source}`, "
        f"training step {bundle.global_step}, {bundle.weights or 'stored'} weights).",
        "",
        "## Use",
        "",
        usage,
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| denoiser input (C, H, W) | {tuple(bundle.shape)} |",
        f"| space | {'latent (decoded by the autoencoder in this folder)' if bundle.first_stage is not None else 'pixel'} |",
        f"| classes | {bundle.num_classes if conditional else 'unconditional'} |",
        f"| prediction | {bundle.prediction_type} |",
        f"| schedule | {bundle.diffusion.schedule}, T = {bundle.diffusion.num_timesteps} |",
        f"| down / up-sampling | {resampling} |",
        f"| parameters (M) | {cost['params_m']:.3f} |",
        f"| GMACs per forward pass | {cost['gmacs']:.4f} |",
        f"| sampler | {sampling['scheduler']}, {sampling['num_inference_steps']} steps"
        + (f", eta {sampling['eta']}" if "eta" in sampling else "")
        + " |",
    ]
    if "gmacs_per_sample_total" in cost:
        lines.append(f"| GMACs per sample (all steps + decoder) | {cost['gmacs_per_sample_total']:.3f} |")
    if bundle.first_stage is not None:
        lines.append(
            f"| autoencoder parameters (M) / decoder GMACs | {cost['first_stage_params_m']:.3f} / {cost['gmacs_decoder']:.4f} |"
        )
    lines += ["", "GMACs: convolutions, linear layers and attention products (FlopCounterMode FLOPs / 2).", ""]
    lines += ["## Quality", ""]
    if quality is None:
        lines += [
            "Not measured at export. Score this folder with the framework's protocol:",
            "",
            _fence(f"python evaluate.py ckpt_path={location or name} metrics=[fid,kid,macs,params,throughput]", "bash"),
        ]
    else:
        rows = [
            (key, value)
            for key, value in quality.items()
            if key.startswith(QUALITY_PREFIXES) and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        lines += ["| metric | value |", "|---|---|"] + [f"| {key} | {value:.4g} |" for key, value in rows]
        lines += ["", "Measured by `evaluate.py` on the exported checkpoint, under this protocol:", ""]
        lines += [_fence(json.dumps(quality.get("protocol", {}), indent=2, sort_keys=True), "json")]
    lines += ["", "## Training", "", f"- teacher: {_teacher_line(config)}"]
    loss = config.get("loss") or {}
    if loss.get("_target_"):
        lines.append(f"- loss: `{loss['_target_'].rsplit('.', 1)[-1]}`")
    data = config.get("data") or {}
    if data.get("_target_"):
        lines.append(f"- data: `{data['_target_'].rsplit('.', 1)[-1]}` (root `{data.get('root')}`)")
    trainer = config.get("trainer") or {}
    if "max_steps" in trainer:
        lines.append(f"- steps: {trainer['max_steps']}")
    if config:
        lines += ["", "The run's config (also in `spectral_diffusion_config.json`):", ""]
        lines += [_fence(yaml.safe_dump(config, sort_keys=False), "yaml")]
    return "\n".join(lines) + "\n"
