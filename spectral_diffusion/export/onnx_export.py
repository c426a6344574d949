"""``format=onnx``: the denoiser (and a latent model's decoder) as ONNX graphs, with a torch-free DDIM sampler.

    <output>/
      denoiser.onnx      inputs sample (B, C, H, W) float32, timestep (B,) int64[, class_labels (B,) int64]
                         -> output (B, C, H, W): the network's raw prediction (eps, v or x0)
      decoder.onnx       latent runs: latents (B, c, h, w), normalised as the denoiser sees them -> images in [-1, 1]
      sampling.json      alphas_cumprod, prediction type, shape, classes, the run's DDIM settings
      sample_onnx.py     the numpy + onnxruntime sampler (a copy of spectral_diffusion/deploy/onnx_sampler.py)
      export.json        source, step, weights, opset, and the ONNX Runtime parity measured at export
      README.md          the model card

Exported with ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter; the dynamo one
failed on this framework's grouped stride-2 convolutions and SDPA when tried), with a dynamic
batch dimension. After writing, :func:`check_onnx` runs ``onnx.checker`` and compares ONNX Runtime
on the CPU against torch in float32 on random inputs; an export off by more than
:data:`PARITY_TOLERANCE` fails instead of being written.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.deploy import onnx_sampler
from spectral_diffusion.diffusion.samplers import DDIMSampler, Sampler
from spectral_diffusion.evaluation.metrics import cost_metrics
from spectral_diffusion.export.diffusers_export import check_exportable, export_record
from spectral_diffusion.export.model_card import model_card
from spectral_diffusion.export.output_folder import EXPORT_RECORD, ExportError, staged_folder

#: Max abs difference between ONNX Runtime and torch fp32 that an export must stay within.
PARITY_TOLERANCE = 1e-4
DEFAULT_OPSET = 17

USAGE = """```bash
pip install numpy onnxruntime pillow
python {where}/sample_onnx.py {where} --num-samples 16 --seed 0 --out samples.png
```

or from Python, with `onnxruntime` directly: `denoiser.onnx` takes `sample`, `timestep`{labels} and
returns the network's raw prediction; `sampling.json` holds the schedule to sample with."""


class OnnxDenoiser(nn.Module):
    """``(sample, timestep[, class_labels]) -> output`` with every input a tensor, as ONNX needs."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.network(sample, timestep, class_labels)


class OnnxDecoder(nn.Module):
    """Normalised latents -> images: the first stage's ``decode``, with its latent statistics inside."""

    def __init__(self, first_stage: nn.Module) -> None:
        super().__init__()
        self.first_stage = first_stage

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode(latents)


def _export(module: nn.Module, inputs: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    names = list(inputs)
    dynamic = {name: {0: "batch"} for name in names} | {"output": {0: "batch"}}
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (module doc); its tracer flags shape checks that are
        # constant for a fixed resolution, and check_onnx re-runs every graph at another batch size.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _run_exporter(module, inputs, path, opset, names, dynamic)


def _run_exporter(
    module: nn.Module, inputs: dict[str, torch.Tensor], path: Path, opset: int, names: list[str], dynamic: dict
) -> None:
    torch.onnx.export(
        module,
        tuple(inputs.values()),
        str(path),
        input_names=names,
        output_names=["output"],
        dynamic_axes=dynamic,
        opset_version=opset,
        dynamo=False,
    )


def denoiser_inputs(bundle: ModelBundle, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the denoiser graph, named as the graph names them."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        "sample": torch.randn((batch, *bundle.shape), generator=gen),
        "timestep": torch.randint(0, bundle.diffusion.num_timesteps, (batch,), generator=gen),
    }
    if bundle.num_classes is not None:
        inputs["class_labels"] = torch.randint(0, bundle.num_classes + 1, (batch,), generator=gen)
    return inputs


def max_abs_difference(path: Path, module: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Max |ONNX Runtime (CPU) - torch fp32| of the graph at ``path`` on ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
    with torch.no_grad():
        ours = module(*inputs.values()).numpy()
    return float(np.abs(theirs - ours).max())


def check_onnx(path: Path, module: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """``onnx.checker`` on the graph, then its parity with torch; returns the max abs difference."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    difference = max_abs_difference(path, module, inputs)
    if not difference <= PARITY_TOLERANCE:
        raise ExportError(
            f"{path.name}: ONNX Runtime differs from torch by {difference:.3g} (max abs) on random inputs, more than "
            f"{PARITY_TOLERANCE:g}; the export is not written. Try another opset (opset=...)."
        )
    return difference


def sampling_settings(bundle: ModelBundle, sampler: Sampler) -> dict[str, Any]:
    """sampling.json: what ``deploy/onnx_sampler.py`` needs to run DDIM as the framework does."""
    if not isinstance(sampler, DDIMSampler):
        raise ExportError(
            f"the ONNX sampler runs DDIM, but the export's sampler is {type(sampler).__name__}; export with sampler=ddim"
        )
    return {
        "denoiser": "denoiser.onnx",
        "decoder": "decoder.onnx" if bundle.first_stage is not None else None,
        "sample_shape": list(bundle.shape),
        "num_classes": bundle.num_classes,
        "prediction_type": bundle.diffusion.prediction_type,
        "alphas_cumprod": bundle.diffusion.alphas_cumprod.to(torch.float64).tolist(),
        "sampler": {
            "name": "ddim",
            "steps": int(sampler.num_inference_steps),
            "eta": float(sampler.eta),
            "timestep_spacing": sampler.timestep_spacing,
            "steps_offset": int(sampler.steps_offset),
            "set_alpha_to_one": bool(sampler.set_alpha_to_one),
            "clip_sample": bool(sampler.clip_sample),
            "clip_sample_range": float(sampler.clip_sample_range),
        },
        "noise": "sample i: numpy.random.default_rng(seed + i), standard_normal in float64 cast to float32: its "
        "initial noise, then one draw per DDIM step when eta > 0; class label i % num_classes",
    }


def export_onnx(
    bundle: ModelBundle,
    sampler: Sampler,
    output: str | Path,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    quality: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, float]]:
    """Write ``bundle`` as ONNX graphs with a sampling config at ``output``; returns it and the parity figures."""
    check_exportable(bundle)
    settings = sampling_settings(bundle, sampler)
    output = Path(output).expanduser()
    network = bundle.network.float().eval().cpu()
    denoiser = OnnxDenoiser(network).eval()
    parity: dict[str, float] = {}
    with staged_folder(output, overwrite) as folder:
        inputs = denoiser_inputs(bundle, batch=2)
        _export(denoiser, inputs, folder / "denoiser.onnx", opset)
        # A batch other than the traced one checks that the batch dimension really is dynamic.
        parity["denoiser_max_abs_diff"] = check_onnx(folder / "denoiser.onnx", denoiser, denoiser_inputs(bundle, 5, 1))
        if bundle.first_stage is not None:
            decoder = OnnxDecoder(bundle.first_stage.float().eval().cpu()).eval()
            latents = {"latents": torch.randn((2, *bundle.shape), generator=torch.Generator().manual_seed(2))}
            _export(decoder, latents, folder / "decoder.onnx", opset)
            check_latents = {"latents": torch.randn((3, *bundle.shape), generator=torch.Generator().manual_seed(3))}
            parity["decoder_max_abs_diff"] = check_onnx(folder / "decoder.onnx", decoder, check_latents)
        (folder / onnx_sampler.SAMPLING_FILE).write_text(json.dumps(settings, indent=1) + "\n")
        shutil.copyfile(onnx_sampler.__file__, folder / "sample_onnx.py")
        cost = cost_metrics(bundle, sampler)
        record = export_record(bundle, sampler, "onnx", opset=opset, parity=parity, cost=cost)
        (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        labels = ", `class_labels`" if bundle.num_classes is not None else ""
        sampling = {"scheduler": "DDIM (sample_onnx.py)", "num_inference_steps": settings["sampler"]["steps"]}
        sampling["eta"] = settings["sampler"]["eta"]
        usage = USAGE.format(where=output, labels=labels)
        (folder / "README.md").write_text(model_card(output.name, bundle, cost, sampling, usage, quality, str(output)))
    return output, parity
