"""DDIM sampling from an ONNX export with numpy and onnxruntime only: no PyTorch, no diffusers.

``scripts/export.py format=onnx output=DIR`` writes ``denoiser.onnx``, for latent runs
``decoder.onnx``, and ``sampling.json`` (the schedule's ``alphas_cumprod``, the prediction type,
the sample shape, the classes and the run's DDIM settings); it copies this file into ``DIR`` as
``sample_onnx.py``, so the folder runs on a machine with only ``pip install numpy onnxruntime``
(and pillow for the PNG)::

    python DIR/sample_onnx.py DIR --num-samples 16 --seed 0 --out samples.png

Noise: sample ``i`` draws everything from its own ``numpy.random.default_rng(seed + i)``: first
its initial noise, ``standard_normal(shape)`` in float64 cast to float32, then one such draw per
DDIM step when ``eta > 0``. So sample ``i`` is the same in any batch. A class-conditional model
gets label ``i % num_classes``, as evaluate.py gives it. (The torch samplers draw from torch's
generators, so the same seed gives other images there; tests/test_export.py checks that both
samplers take the same steps from the same noise.)

The update is the framework's DDIM (``spectral_diffusion/diffusion/samplers.py: DDIMSampler``),
which is diffusers' ``DDIMScheduler``: timesteps spaced ``leading`` / ``trailing`` / ``linspace``,
each step from ``t`` to ``t - T // steps``, x0 clipped where ``clip_sample`` is on, with eps then
recomputed from the clipped x0. Coefficients are computed in float64, as there.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

SAMPLING_FILE = "sampling.json"
#: A draw of standard normals of a given shape (the batch's rows first).
Draw = Callable[[tuple[int, ...]], np.ndarray]


class OnnxDiffusionModel:
    """The ONNX sessions and sampling settings of an export folder."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        config_file = self.folder / SAMPLING_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} does not exist: {self.folder} is not an ONNX export folder")
        self.config = json.loads(config_file.read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = providers or ["CPUExecutionProvider"]
        self.denoiser = ort.InferenceSession(str(self.folder / self.config["denoiser"]), options, providers=providers)
        decoder = self.config.get("decoder")
        self.decoder = (
            ort.InferenceSession(str(self.folder / decoder), options, providers=providers) if decoder else None
        )
        self.alphas_cumprod = np.asarray(self.config["alphas_cumprod"], dtype=np.float64)
        self.shape = tuple(int(s) for s in self.config["sample_shape"])
        self.num_classes = self.config.get("num_classes")

    def denoise(self, sample: np.ndarray, timestep: np.ndarray, class_labels: np.ndarray | None) -> np.ndarray:
        feeds = {"sample": sample.astype(np.float32), "timestep": timestep.astype(np.int64)}
        if self.num_classes is not None:
            feeds["class_labels"] = class_labels.astype(np.int64)
        return self.denoiser.run(None, feeds)[0]

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Images nominally in [-1, 1] (the latents themselves in pixel space)."""
        if self.decoder is None:
            return latents
        return self.decoder.run(None, {"latents": latents.astype(np.float32)})[0]


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0) -> list[int]:
    """Descending DDIM timesteps, as diffusers' DDIMScheduler.set_timesteps spaces them."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    T, n = num_train_timesteps, steps
    if spacing == "leading":
        grid = np.arange(n, dtype=np.float64) * (T // n)
    elif spacing == "trailing":
        grid = np.arange(T, 0, -T / n, dtype=np.float64)[::-1] - 1
    elif spacing == "linspace":
        grid = np.linspace(0, T - 1, n, dtype=np.float64)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; choose leading, trailing or linspace")
    timesteps = np.round(grid).astype(np.int64)[::-1]
    if steps_offset and spacing == "leading":
        timesteps = timesteps + steps_offset
    return [int(t) for t in timesteps]


def predict_x0_eps(
    output: np.ndarray, sample: np.ndarray, alpha_bar: float, prediction_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """(x0, eps) from the network output (eps, v or x0) at a noise level ``alpha_bar``."""
    a, s = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    if prediction_type == "eps":
        return (sample - s * output) / a, output
    if prediction_type == "v":
        return a * sample - s * output, s * sample + a * output
    if prediction_type == "x0":
        return output, (sample - a * output) / s
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def ddim_sample_latents(
    model: OnnxDiffusionModel,
    noise: np.ndarray,
    class_labels: np.ndarray | None = None,
    steps: int | None = None,
    eta: float | None = None,
    draw: Draw | None = None,
) -> np.ndarray:
    """Run DDIM from the initial ``noise`` ``(B, C, H, W)``; ``draw`` gives each stochastic step's noise."""
    settings = model.config["sampler"]
    steps = int(steps or settings["steps"])
    eta = float(settings["eta"] if eta is None else eta)
    if eta > 0 and draw is None:
        raise ValueError("eta > 0 needs a noise source (draw)")
    T = len(model.alphas_cumprod)
    timesteps = ddim_timesteps(T, steps, settings["timestep_spacing"], int(settings.get("steps_offset", 0)))
    stride = T // steps
    final_alpha = 1.0 if settings.get("set_alpha_to_one", True) else float(model.alphas_cumprod[0])
    x = noise.astype(np.float32)
    for t in timesteps:
        output = model.denoise(x, np.full((x.shape[0],), t, dtype=np.int64), class_labels)
        a_t = float(model.alphas_cumprod[t])
        previous = t - stride
        a_prev = float(model.alphas_cumprod[previous]) if previous >= 0 else final_alpha
        x0, eps = predict_x0_eps(output.astype(np.float32), x, a_t, model.config["prediction_type"])
        if settings.get("clip_sample", False):
            bound = float(settings.get("clip_sample_range", 1.0))
            x0 = np.clip(x0, -bound, bound)
            eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1.0 - a_t)
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        direction = np.sqrt(max(1 - a_prev - sigma**2, 0.0))
        x = np.sqrt(a_prev) * x0 + direction * eps
        if eta > 0 and sigma > 0:
            x = x + sigma * draw(x.shape)
        x = x.astype(np.float32)
    return x


def per_sample_draws(seed: int, indices: list[int]) -> Draw:
    """Noise of a batch whose row ``r`` comes from ``default_rng(seed + indices[r])`` alone."""
    streams = [np.random.default_rng(seed + int(i)) for i in indices]

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([rng.standard_normal(shape[1:]) for rng in streams]).astype(np.float32)

    return draw


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] ``(B, C, H, W)`` -> uint8 ``(B, H, W, C)``, rounded to the nearest level (evaluate.py's ``round``)."""
    scaled = (np.clip(images, -1.0, 1.0) + 1.0) * 127.5
    return np.round(scaled).astype(np.uint8).transpose(0, 2, 3, 1)


def generate(
    model: OnnxDiffusionModel,
    num_samples: int,
    seed: int = 0,
    steps: int | None = None,
    eta: float | None = None,
    batch_size: int = 16,
    first_index: int = 0,
) -> np.ndarray:
    """``num_samples`` uint8 images ``(N, H, W, C)``: samples ``first_index ...`` under the noise rule above."""
    images = []
    for start in range(first_index, first_index + num_samples, batch_size):
        indices = list(range(start, min(start + batch_size, first_index + num_samples)))
        draw = per_sample_draws(seed, indices)
        noise = draw((len(indices), *model.shape))
        labels = None if model.num_classes is None else np.array([i % model.num_classes for i in indices])
        latents = ddim_sample_latents(model, noise, labels, steps, eta, draw)
        images.append(to_uint8(model.decode(latents)))
    return np.concatenate(images)


def save_grid(images: np.ndarray, path: str | Path) -> Path:
    """Tile uint8 ``(N, H, W, C)`` images into one PNG (pillow) or, without pillow, a ``.npy`` of the images."""
    n, h, w, c = images.shape
    columns = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.zeros((rows * (h + 2) + 2, columns * (w + 2) + 2, c), dtype=np.uint8)
    for k, image in enumerate(images):
        r, q = divmod(k, columns)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = image
    path = Path(path)
    try:
        from PIL import Image
    except ImportError:
        path = path.with_suffix(".npy")
        np.save(path, images)
        return path
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DDIM samples from an ONNX export (numpy + onnxruntime only).")
    parser.add_argument("folder", help="the folder scripts/export.py format=onnx wrote")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="sample i uses numpy.random.default_rng(seed + i)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the exported run's)")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the exported run's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--out", default="samples.png", help="PNG grid (a .npy of the images without pillow)")
    args = parser.parse_args(argv)
    try:
        model = OnnxDiffusionModel(args.folder, threads=args.threads)
    except FileNotFoundError as err:
        parser.exit(2, f"error: {err}\n")
    images = generate(model, args.num_samples, args.seed, args.steps, args.eta, args.batch_size)
    print(f"wrote {save_grid(images, args.out)} ({len(images)} samples)")


if __name__ == "__main__":
    main()
