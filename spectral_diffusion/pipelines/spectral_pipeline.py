"""``SpectralDiffusionPipeline``: an exported student (or any model of this framework) as a diffusers pipeline.

    from spectral_diffusion import SpectralDiffusionPipeline
    pipe = SpectralDiffusionPipeline.from_pretrained("exports/fmnist_sd")         # or a hub id
    images = pipe(batch_size=16, generator=[torch.Generator().manual_seed(i) for i in range(16)]).images

A folder written by ``scripts/export.py format=diffusers`` holds its components: ``unet/`` (a
:class:`~spectral_diffusion.networks.diffusers_unet.SpectralUNet2DModel`), ``scheduler/`` (a
diffusers scheduler), for latent runs ``vae/`` or ``vqvae/``, and ``model_index.json``, which also
records the latent normalisation and the run's sampling defaults (steps, eta).

The loop is diffusers' own: ``scheduler.set_timesteps``, then ``unet`` and ``scheduler.step`` per
timestep, noise from ``generator`` through diffusers' ``randn_tensor``. With one generator per
sample seeded ``seed + i``, sample ``i`` equals ``evaluate.py noise=generators seed=seed``'s sample
``i`` with the same sampler and steps (tests/test_export.py states the tolerance).
Class-conditional models take ``class_labels`` (evaluate.py gives sample ``i`` label
``i % num_classes``) and ``guidance_scale`` (classifier-free guidance, through the framework's
:class:`~spectral_diffusion.diffusion.guidance.ClassifierFreeGuidance`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

# The component classes an exported folder names: diffusers' loader only resolves modules that are
# already imported (it never imports what a folder names), so importing the pipeline imports them.
from spectral_diffusion.autoencoders.diffusers_kl import SpectralAutoencoderKL  # noqa: F401
from spectral_diffusion.diffusion.diffusers_schedulers import step_kwargs
from spectral_diffusion.diffusion.guidance import ClassifierFreeGuidance
from spectral_diffusion.networks.diffusers_unet import SpectralUNet2DModel  # noqa: F401

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class SpectralDiffusionPipeline(DiffusionPipeline):
    """Unconditional or class-conditional sampling from a UNet, a scheduler and (optionally) an autoencoder.

    Args:
        unet: the denoiser, called ``unet(sample, timestep, class_labels).sample``.
        scheduler: a diffusers scheduler (DDIM, DDPM or DPM-Solver multistep).
        vae: the first stage of a latent model (``decode(raw).sample``); ``None`` in pixel space.
        latent_shift, latent_scale: per-channel statistics: the UNet sees ``(raw - shift) / scale``.
        num_inference_steps, eta: the run's sampling defaults, used when a call does not give them.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: object,
        vae: torch.nn.Module | None = None,
        latent_shift: Sequence[float] | None = None,
        latent_scale: Sequence[float] | None = None,
        num_inference_steps: int = 50,
        eta: float = 0.0,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(
            latent_shift=None if latent_shift is None else [float(v) for v in latent_shift],
            latent_scale=None if latent_scale is None else [float(v) for v in latent_scale],
            num_inference_steps=int(num_inference_steps),
            eta=float(eta),
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of what the UNet denoises."""
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (int(self.unet.config.in_channels), int(size), int(size))

    @property
    def num_classes(self) -> int | None:
        return self.unet.config.get("num_classes", self.unet.config.get("num_class_embeds"))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images nominally in [-1, 1]: the autoencoder's decoding of the de-normalised latents (pixels as they are)."""
        if self.vae is None:
            return latents
        channels = latents.shape[1]
        shift = torch.tensor(self.config.latent_shift or [0.0] * channels, device=latents.device)
        scale = torch.tensor(self.config.latent_scale or [1.0] * channels, device=latents.device)
        raw = latents.float() * scale[None, :, None, None] + shift[None, :, None, None]
        return self.vae.decode(raw.to(self.vae.dtype)).sample.float()

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        return self.unet(x, t, class_labels).sample

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: torch.Tensor | Sequence[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        eta: float | None = None,
        guidance_scale: float = 1.0,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images.

        Args:
            class_labels: one label per image for a class-conditional UNet (required there).
            generator: one ``torch.Generator``, or one per image (each image then depends on its own only).
            num_inference_steps, eta: default to the exported run's (``self.config``).
            guidance_scale: classifier-free guidance weight (1: plain conditional sampling).
            latents: the initial noise, instead of drawing it.
            output_type: ``pil``, ``np`` (``(B, H, W, C)`` in [0, 1]), ``pt`` (``(B, C, H, W)`` in [0, 1])
                or ``latent`` (the denoised latents, not decoded).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; choose one of {list(OUTPUT_TYPES)}")
        steps = int(num_inference_steps or self.config.num_inference_steps)
        eta = self.config.eta if eta is None else float(eta)
        device = self._execution_device
        labels = self._class_labels(class_labels, batch_size, device)
        guidance = ClassifierFreeGuidance(scale=float(guidance_scale)) if guidance_scale != 1.0 else None
        if guidance is not None and labels is None:
            raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional model and class_labels")

        shape = (batch_size, *self.sample_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.to(device) * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(steps, device=device)
        extra = step_kwargs(type(self.scheduler).__name__, self.scheduler.config.get("clip_sample", False), eta)
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            extra["generator"] = generator
        timesteps = self.scheduler.timesteps
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            t_batch = torch.full((batch_size,), int(t), device=device, dtype=torch.long)
            if guidance is None:
                output = self._denoise(model_input, t_batch, labels)
            else:
                output = guidance.predict(
                    self._denoise, model_input, t_batch, labels, i, len(timesteps), null_label=self.num_classes
                )
            latents = self.scheduler.step(output, t, latents, **extra).prev_sample

        if output_type == "latent":
            images = latents
        else:
            images = (self.decode_latents(latents) / 2 + 0.5).clamp(0, 1)
            if output_type in ("np", "pil"):
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _class_labels(
        self, class_labels: torch.Tensor | Sequence[int] | None, batch_size: int, device: torch.device
    ) -> torch.Tensor | None:
        num_classes = self.num_classes
        if num_classes is None:
            if class_labels is not None:
                raise ValueError("class_labels were given, but this model is unconditional")
            return None
        if class_labels is None:
            raise ValueError(
                f"this model is class-conditional ({num_classes} classes): pass class_labels, one per image "
                f"(label {num_classes} is 'no class')"
            )
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
        if len(labels) != batch_size:
            raise ValueError(f"got {len(labels)} class_labels for batch_size={batch_size}")
        if labels.min() < 0 or labels.max() > num_classes:
            raise ValueError(f"class_labels must be in [0, {num_classes}] ({num_classes} = 'no class')")
        return labels
