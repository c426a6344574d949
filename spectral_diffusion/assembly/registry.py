"""The classes a checkpoint's stored config may have rebuilt, by group, under their registered names.

A stored config names its parts by the ``_target_`` strings Hydra wrote when the run started. Those
strings are looked up here, group by group, and never imported: a ``model`` node can only become a
network, a ``data`` node only a DataModule, whatever the file says. The node's other keys are passed
as plain keyword arguments; nested objects are not built. ``utils/stored_config.py`` has already
refused everything outside the allow-list before this runs.

A project's own class (a custom network, say) becomes loadable from its checkpoints with
:func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spectral_diffusion.autoencoders import DiffusersAutoencoder, IdentityFirstStage, KLAutoencoder
from spectral_diffusion.data import (
    CelebAHQDataModule,
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    LatentDataModule,
    LSUNDataModule,
)
from spectral_diffusion.data.text_embeddings import TextEmbeddingDataModule
from spectral_diffusion.diffusion import DDIMSampler, DDPMSampler, DPMSolverPlusPlusSampler, GaussianDiffusion
from spectral_diffusion.networks import UNet
from spectral_diffusion.utils.stored_config import StoredConfigError, allow_stored_targets


def _framework_autoencoder(**kwargs: Any) -> Any:
    from spectral_diffusion.assembly.first_stages import framework_autoencoder

    return framework_autoencoder(**kwargs)


def _streaming_data(**kwargs: Any) -> Any:
    # Imported on use: LitData is the optional ``streaming`` extra.
    from spectral_diffusion.data.streaming import StreamingDataModule

    return StreamingDataModule(**kwargs)


#: group -> {registered name -> constructor}. Several names of one class are the spellings that
#: this and earlier releases' configs wrote.
REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {
    "model": {
        "spectral_diffusion.networks.UNet": UNet,
        "spectral_diffusion.networks.unet.UNet": UNet,
        "spectral_diffusion.autoencoders.KLAutoencoder": KLAutoencoder,
        "spectral_diffusion.autoencoders.kl_autoencoder.KLAutoencoder": KLAutoencoder,
    },
    "diffusion": {
        "spectral_diffusion.diffusion.GaussianDiffusion": GaussianDiffusion,
        "spectral_diffusion.diffusion.process.GaussianDiffusion": GaussianDiffusion,
    },
    "sampler": {
        "spectral_diffusion.diffusion.DDIMSampler": DDIMSampler,
        "spectral_diffusion.diffusion.DDPMSampler": DDPMSampler,
        "spectral_diffusion.diffusion.DPMSolverPlusPlusSampler": DPMSolverPlusPlusSampler,
    },
    "autoencoder": {
        "spectral_diffusion.autoencoders.IdentityFirstStage": IdentityFirstStage,
        "spectral_diffusion.autoencoders.DiffusersAutoencoder": DiffusersAutoencoder,
        "spectral_diffusion.autoencoders.FrameworkAutoencoder": _framework_autoencoder,
        "spectral_diffusion.assembly.first_stages.framework_autoencoder": _framework_autoencoder,
    },
    "data": {
        "spectral_diffusion.data.FashionMNISTDataModule": FashionMNISTDataModule,
        "spectral_diffusion.data.CIFAR10DataModule": CIFAR10DataModule,
        "spectral_diffusion.data.CelebAHQDataModule": CelebAHQDataModule,
        "spectral_diffusion.data.LSUNDataModule": LSUNDataModule,
        "spectral_diffusion.data.ImageFolderDataModule": ImageFolderDataModule,
        "spectral_diffusion.data.LatentDataModule": LatentDataModule,
        "spectral_diffusion.data.text_embeddings.TextEmbeddingDataModule": TextEmbeddingDataModule,
        "spectral_diffusion.data.streaming.StreamingDataModule": _streaming_data,
    },
}


def register(group: str, name: str, constructor: Callable[..., Any]) -> None:
    """Let checkpoints whose ``group`` node has ``_target_: name`` be rebuilt with ``constructor``.

    E.g. ``register("model", "my_project.nets.MyUNet", MyUNet)`` before ``load_run``. This also
    allows the name in stored configs (``utils/stored_config.py: allow_stored_targets``).
    """
    REGISTRY.setdefault(group, {})[name] = constructor
    allow_stored_targets(name)


def build_stored(node: dict[str, Any], group: str, source: str, **given: Any) -> Any:
    """The object of a stored config's ``group`` node, e.g. ``build_stored(config["model"], "model", path)``.

    ``given`` are arguments the caller supplies (a sampler's ``diffusion``). The node must hold a
    ``_target_`` registered for ``group``; its other keys are plain keyword arguments.
    """
    if not isinstance(node, dict):
        raise StoredConfigError(f"{source}: the stored {group!r} config is a {type(node).__name__}, not a mapping")
    target = node.get("_target_")
    constructors = REGISTRY.get(group, {})
    if target not in constructors:
        raise StoredConfigError(
            f"{source}: {group}._target_={target!r} is not a {group} this framework rebuilds from a checkpoint "
            f"(registered: {', '.join(sorted(constructors)) or 'none'}); nothing has been built"
        )
    kwargs = {key: value for key, value in node.items() if not key.startswith("_")}
    nested = [key for key, value in kwargs.items() if isinstance(value, dict) and "_target_" in value]
    if nested:
        raise StoredConfigError(
            f"{source}: {group}.{nested[0]} is an object of its own; a stored {group} config holds plain values only"
        )
    try:
        return constructors[target](**kwargs, **given)
    except TypeError as err:  # a stored key the class does not take: an edited or foreign config
        raise StoredConfigError(f"{source}: the stored {group} config does not fit {target}: {err}") from err
