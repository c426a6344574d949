"""A checkpoint's stored run config is untrusted input: what it may name, checked before anything is built.

Every checkpoint written by ``train.py`` carries the resolved run config, ``_target_`` entries and
all. A downloaded checkpoint can be edited, and a ``_target_`` that a loader handed to Hydra would
be imported and called: ``builtins.open`` truncates a file, ``torch.load`` with
``weights_only: false`` runs a pickle. So before a stored config is used, :func:`check_stored_config`
walks all of it (every group, every mapping and list, at every depth) and refuses:

- a ``_target_`` that is not one of :data:`STORED_TARGETS`, the classes and functions this
  framework's own configs name (and those of earlier releases, so their checkpoints still load);
- ``_partial_`` anywhere but under ``module.optimizer`` (the optimizer is stored half-built);
- ``_args_``, ``_call_``, ``_recursive_`` and ``_convert_``, which no config of this framework
  writes;
- an interpolation (``${...}``): stored configs are resolved before they are written, so one in a
  checkpoint was put there by hand, and resolving it would run a resolver.

The check only reads the config; the error names the checkpoint, the key path and the target.
Objects are then built by ``assembly/registry.py`` from registered names, never by importing what
a file names. A project that stores classes of its own (a custom network, an extra loss term)
allows them in code, once, with :func:`allow_stored_targets`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from spectral_diffusion.utils.errors import UserError

#: What a stored config of this framework may name, by the ``_target_`` string Hydra writes.
FRAMEWORK_TARGETS = frozenset(
    {
        # networks and processes
        "spectral_diffusion.networks.UNet",
        "spectral_diffusion.networks.unet.UNet",
        "spectral_diffusion.autoencoders.KLAutoencoder",
        "spectral_diffusion.autoencoders.kl_autoencoder.KLAutoencoder",
        "spectral_diffusion.diffusion.GaussianDiffusion",
        "spectral_diffusion.diffusion.process.GaussianDiffusion",
        # samplers and guidance
        "spectral_diffusion.diffusion.DDIMSampler",
        "spectral_diffusion.diffusion.DDPMSampler",
        "spectral_diffusion.diffusion.DPMSolverPlusPlusSampler",
        "spectral_diffusion.diffusion.guidance.ClassifierFreeGuidance",
        # first stages
        "spectral_diffusion.autoencoders.IdentityFirstStage",
        "spectral_diffusion.autoencoders.DiffusersAutoencoder",
        "spectral_diffusion.autoencoders.FrameworkAutoencoder",
        "spectral_diffusion.assembly.first_stages.framework_autoencoder",
        # teachers (recorded in a student's config; rebuilt only through the loaders)
        "spectral_diffusion.teachers.load_checkpoint_teacher",
        "spectral_diffusion.teachers.load_diffusers_teacher",
        "spectral_diffusion.assembly.teachers.checkpoint_teacher",
        "spectral_diffusion.assembly.teachers.diffusers_teacher",
        # data
        "spectral_diffusion.data.FashionMNISTDataModule",
        "spectral_diffusion.data.CIFAR10DataModule",
        "spectral_diffusion.data.CelebAHQDataModule",
        "spectral_diffusion.data.LSUNDataModule",
        "spectral_diffusion.data.ImageFolderDataModule",
        "spectral_diffusion.data.LatentDataModule",
        "spectral_diffusion.data.text_embeddings.TextEmbeddingDataModule",
        "spectral_diffusion.data.streaming.StreamingDataModule",
        # losses
        "spectral_diffusion.losses.DenoisingLoss",
        "spectral_diffusion.losses.SpectralDistillationLoss",
        "spectral_diffusion.losses.AutoencoderLoss",
        # the LightningModules and their callbacks, loggers and plugins
        "spectral_diffusion.training.DiffusionModule",
        "spectral_diffusion.training.autoencoder_module.AutoencoderModule",
        "spectral_diffusion.training.EMA",
        "spectral_diffusion.training.SampleGrid",
        "spectral_diffusion.training.monitor.FrechetMonitor",
        "spectral_diffusion.training.preemption.Preemption",
        "spectral_diffusion.training.progress.StepProgress",
        "spectral_diffusion.training.loggers.ContinuingCSVLogger",
        "spectral_diffusion.utils.checkpoint.AtomicCheckpointIO",
    }
)

#: Library classes a stored run config names: the trainer, callbacks, loggers and optimizers of a
#: run. They are recorded so that a run can be reproduced; none is built from a checkpoint.
LIBRARY_TARGETS = frozenset(
    {
        "lightning.pytorch.trainer.Trainer",
        "lightning.pytorch.Trainer",
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "lightning.pytorch.callbacks.RichProgressBar",
        "lightning.pytorch.callbacks.TQDMProgressBar",
        "lightning.pytorch.callbacks.EarlyStopping",
        "lightning.pytorch.loggers.CSVLogger",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "lightning.pytorch.loggers.WandbLogger",
        *(
            f"torch.optim.{name}"
            for name in ("AdamW", "Adam", "SGD", "RAdam", "NAdam", "Adamax", "Adagrad", "RMSprop", "Adadelta")
        ),
    }
)

#: Every ``_target_`` a stored config may hold (see :func:`allow_stored_targets` for more).
STORED_TARGETS: set[str] = set(FRAMEWORK_TARGETS | LIBRARY_TARGETS)

#: Key paths where ``_partial_: true`` is expected: the optimizer, which the module completes.
PARTIAL_ALLOWED_AT = frozenset({"module.optimizer"})
#: Hydra's instantiation keys that no stored config of this framework holds.
REFUSED_KEYS = ("_args_", "_call_", "_recursive_", "_convert_")


class StoredConfigError(UserError, ValueError):
    """A checkpoint's stored config names something this framework does not build from checkpoints."""


def allow_stored_targets(*targets: str) -> None:
    """Let stored configs name ``targets`` too, e.g. a project's own network class.

    Call it in code before loading, as with ``torch.serialization.add_safe_globals``; a checkpoint
    can never allow anything by itself. A target is also buildable from a checkpoint only once it
    is registered with ``spectral_diffusion.assembly.registry.register``.
    """
    STORED_TARGETS.update(targets)


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(key path, node)`` of every mapping, list and leaf below ``node``, ``node`` first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def config_targets(config: Any) -> set[str]:
    """Every ``_target_`` string in a (resolved, plain) config, at any depth."""
    return {
        node["_target_"]
        for _, node in _walk(config, "")
        if isinstance(node, dict) and isinstance(node.get("_target_"), str)
    }


def stored_config_problems(config: Any, allowed: Iterable[str] | None = None) -> list[str]:
    """Every refused entry of ``config`` as ``"key path: what"`` (empty: it may be used)."""
    allowed = STORED_TARGETS if allowed is None else set(allowed)
    problems = []
    for path, node in _walk(config, ""):
        if isinstance(node, str) and "${" in node:
            problems.append(f"{path}: holds the interpolation {node!r}; stored configs are resolved when written")
        if not isinstance(node, dict):
            continue
        for key in node:
            if not isinstance(key, str):
                problems.append(f"{path}: has a key of type {type(key).__name__}, not a string")
        target = node.get("_target_")
        if target is not None and (not isinstance(target, str) or target not in allowed):
            problems.append(f"{path}._target_ names {target!r}, which a checkpoint may not ask to build")
        if "_partial_" in node and path not in PARTIAL_ALLOWED_AT:
            problems.append(f"{path}._partial_ is only expected under {', '.join(sorted(PARTIAL_ALLOWED_AT))}")
        problems += [f"{path}.{key} is not a key this framework stores" for key in REFUSED_KEYS if key in node]
    return problems


def check_stored_config(config: Any, source: str, also_allowed: Iterable[str] = ()) -> None:
    """Raise :class:`StoredConfigError`, naming ``source`` and every refused key, unless ``config`` is safe.

    ``also_allowed``: targets the caller vouches for, on top of :data:`STORED_TARGETS`.
    """
    if config is None:
        return
    if not isinstance(config, dict):
        raise StoredConfigError(f"{source}: the stored run config is a {type(config).__name__}, not a mapping")
    problems = stored_config_problems(config, STORED_TARGETS | set(also_allowed))
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise StoredConfigError(
            f"refusing to load {source}: its stored config asks for what this framework never builds from a "
            f"checkpoint (nothing has been built):\n  {shown}\n"
            "A checkpoint written by this framework's train.py holds none of these. If it is your own class, allow "
            "it in code with spectral_diffusion.utils.stored_config.allow_stored_targets(...)."
        )
