"""``format=diffusers``: a trained model as a folder that diffusers' own machinery loads.

    <output>/
      model_index.json             SpectralDiffusionPipeline: components, latent statistics, steps, eta
      unet/                        SpectralUNet2DModel: config.json + diffusion_pytorch_model.safetensors
      scheduler/                   scheduler_config.json of the diffusers scheduler equal to the sampler
      vae/ (latent runs)           SpectralAutoencoderKL or AutoencoderKL (vqvae/: VQModel)
      spectral_diffusion_config.json   the training run's config (model, diffusion, data, teacher, ...)
      export.json                  what was exported: source checkpoint, step, weights, sampler, versions
      README.md                    the model card

The folder is written by ``DiffusionPipeline.save_pretrained`` (safetensors only) and loads with
``SpectralDiffusionPipeline.from_pretrained(output)``; ``pipe.push_to_hub(repo_id)`` publishes it.
The framework reads it back through ``assembly/load.py: load_run`` (evaluate.py, ``teacher=diffusers``)
with the checks of ``bundles/diffusers_folder.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spectral_diffusion.autoencoders import DiffusersAutoencoder, KLFirstStage
from spectral_diffusion.autoencoders.diffusers_kl import SpectralAutoencoderKL
from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.bundles.diffusers_folder import RUN_CONFIG_FILE
from spectral_diffusion.diffusion.diffusers_schedulers import build_scheduler, sampling_defaults, scheduler_config
from spectral_diffusion.diffusion.samplers import Sampler
from spectral_diffusion.evaluation.metrics import cost_metrics
from spectral_diffusion.export.model_card import model_card
from spectral_diffusion.export.output_folder import EXPORT_RECORD, ExportError, staged_folder
from spectral_diffusion.networks.diffusers_unet import SpectralUNet2DModel
from spectral_diffusion.networks.unet import UNet
from spectral_diffusion.pipelines import SpectralDiffusionPipeline

USAGE = """```python
import torch
from spectral_diffusion import SpectralDiffusionPipeline

pipe = SpectralDiffusionPipeline.from_pretrained("{where}")
# sample i of evaluate.py noise=generators seed=0 is the one drawn with generator seed 0 + i
generators = [torch.Generator().manual_seed(i) for i in range(16)]
images = pipe(batch_size=16, generator=generators{labels}).images   # PIL images
```"""


def check_exportable(bundle: ModelBundle) -> None:
    """Refuse, with what would work, a model this exporter cannot write."""
    if bundle.config is None or "model" not in bundle.config:
        raise ExportError(
            f"{bundle.source} holds no stored run config (the model, diffusion and data configs train.py writes "
            "into every checkpoint); export needs it to rebuild the network. Export a checkpoint written by train.py."
        )
    if not isinstance(bundle.network, UNet):
        raise ExportError(
            f"{bundle.source}: the network is a {type(bundle.network).__name__}, not this framework's UNet; export "
            "takes train.py checkpoints of UNet models (a diffusers folder is already in diffusers' format)"
        )
    if bundle.network.context_dim is not None:
        raise ExportError(
            f"{bundle.source} is text-conditional (context_dim={bundle.network.context_dim}); exporting models that "
            "need a text encoder is not supported, only unconditional and class-conditional ones"
        )


def unet_model(bundle: ModelBundle) -> SpectralUNet2DModel:
    """The bundle's network as a diffusers model holding a copy of its weights."""
    unet = SpectralUNet2DModel.from_unet_config(dict(bundle.config["model"]))
    unet.net.load_state_dict(bundle.network.state_dict())
    return unet.eval()


def first_stage_model(bundle: ModelBundle) -> tuple[Any, list[float] | None, list[float] | None]:
    """``(diffusers autoencoder or None, latent shift, latent scale)`` of the bundle's first stage."""
    first_stage = bundle.first_stage
    if first_stage is None:
        return None, None, None
    if isinstance(first_stage, KLFirstStage):
        vae = SpectralAutoencoderKL.from_network(first_stage.net)
    elif isinstance(first_stage, DiffusersAutoencoder):
        vae = first_stage.vae
    else:
        raise ExportError(f"{bundle.source}: a {type(first_stage).__name__} first stage cannot be exported")
    return vae.eval(), first_stage.latent_shift.tolist(), first_stage.latent_scale.tolist()


def checked_quality(metrics_file: str | Path | None, bundle: ModelBundle) -> dict[str, Any] | None:
    """An evaluate.py metrics.json of this very checkpoint and weights, for the model card; ``None`` without one."""
    if not metrics_file:
        return None
    path = Path(metrics_file).expanduser()
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"metrics_json={path}: cannot read it as evaluate.py's metrics.json ({err})") from err
    if not isinstance(metrics, dict):
        raise ExportError(f"metrics_json={path} holds a {type(metrics).__name__}, not evaluate.py's metrics object")
    scored = metrics.get("ckpt_path")
    exported = bundle.source.removeprefix("checkpoint:")
    if scored is None or Path(str(scored)).expanduser().resolve() != Path(exported).resolve():
        raise ExportError(
            f"metrics_json={path} scores {scored}, not the exported checkpoint {exported}; give the metrics.json of an "
            f"evaluate.py run with ckpt_path={exported}"
        )
    if metrics.get("weights") not in (None, bundle.weights):
        raise ExportError(
            f"metrics_json={path} scored the {metrics.get('weights')} weights, but the export holds the {bundle.weights} "
            "ones; match use_ema between evaluate.py and the export"
        )
    return metrics


def export_record(bundle: ModelBundle, sampler: Sampler, export_format: str, **extra: Any) -> dict[str, Any]:
    """The contents of export.json."""
    from importlib.metadata import version

    name, scheduler_kwargs = scheduler_config(sampler) if export_format == "diffusers" else (None, None)
    return {
        "format": export_format,
        "source": bundle.source,
        "global_step": bundle.global_step,
        "weights": bundle.weights,
        "sampler": {"scheduler": name, "scheduler_config": scheduler_kwargs, **sampling_defaults(sampler)},
        "versions": {package: version(package) for package in ("spectral-diffusion", "torch", "diffusers")},
        **extra,
    }


def export_diffusers(
    bundle: ModelBundle,
    sampler: Sampler,
    output: str | Path,
    overwrite: bool = False,
    quality: dict[str, Any] | None = None,
) -> Path:
    """Write ``bundle`` as a diffusers pipeline folder at ``output`` (layout in the module doc).

    ``quality``: the :func:`checked_quality` metrics.json of the same checkpoint, quoted by the model card.
    """
    check_exportable(bundle)
    output = Path(output).expanduser()
    unet = unet_model(bundle)
    vae, shift, scale = first_stage_model(bundle)
    defaults = sampling_defaults(sampler)
    pipe = SpectralDiffusionPipeline(
        unet=unet, scheduler=build_scheduler(sampler), vae=vae, latent_shift=shift, latent_scale=scale, **defaults
    )
    cost = cost_metrics(bundle, sampler)
    record = export_record(bundle, sampler, "diffusers", cost=cost)
    labels = f", class_labels=[i % {bundle.num_classes} for i in range(16)]" if bundle.num_classes else ""
    sampling = {"scheduler": record["sampler"]["scheduler"], **defaults}
    card = model_card(
        output.name, bundle, cost, sampling, USAGE.format(where=output, labels=labels), quality, str(output)
    )
    with staged_folder(output, overwrite) as folder:
        (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / RUN_CONFIG_FILE).write_text(json.dumps(bundle.config, indent=2) + "\n")
        (folder / "README.md").write_text(card)
    return output
