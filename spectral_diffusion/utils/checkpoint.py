"""Reading and writing checkpoints safely.

- Checkpoints are only ever read with ``torch.load(weights_only=True)``: tensors and plain
  containers, never pickled code. The run's config travels inside as a plain dict.
- They are written atomically (temporary file, fsync, rename), so a crash or kill during a save
  leaves the previous checkpoint intact.
- Loading weights into a network of another architecture fails with an error that names the
  mismatched keys, not a raw ``load_state_dict`` traceback.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from spectral_diffusion.utils.errors import UserError
from spectral_diffusion.utils.stored_config import StoredConfigError, check_stored_config

#: Where this framework keeps its own metadata (config, git revision) inside a Lightning checkpoint.
METADATA_KEY = "spectral_diffusion"
#: Prefix of the network's parameters in the LightningModule's state_dict.
NET_PREFIX = "net."
#: Top-level checkpoint key of the loggers' run ids (``{"WandbLogger": "<run id>", ...}``).
LOGGER_IDS_KEY = "logger_ids"


class CheckpointLoadError(UserError, RuntimeError):
    """A checkpoint file that cannot be read safely: corrupt, truncated, or holding pickled objects."""


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint's weights do not fit the network that was built (the message says how)."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``, with clear errors for bad paths.

    ``mmap=True`` maps the tensors instead of reading them, for a cheap look at keys and shapes.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointLoadError(
            f"cannot load checkpoint {path} with weights_only=True ({type(err).__name__}: {err}). "
            "It is corrupt, truncated, or holds pickled objects that this framework refuses to load."
        ) from err


def checkpoint_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved run config stored in a checkpoint of this framework, if any (unchecked: see
    :func:`read_checkpoint`)."""
    return checkpoint.get(METADATA_KEY, {}).get("config")


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", mmap: bool = False, also_allowed: Iterable[str] = ()
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(checkpoint, stored run config)`` of a file, the config checked before anyone uses it.

    The one way this framework reads a checkpoint: the tensors with ``weights_only=True``
    (:func:`load_checkpoint`), and the framework's metadata, the stored config included, walked by
    :func:`~spectral_diffusion.utils.stored_config.check_stored_config`, which refuses what a
    checkpoint may not ask to build before anything is built. ``also_allowed`` are further targets
    the caller vouches for (a resumed run's own callbacks, which the command names).
    """
    checkpoint = load_checkpoint(path, map_location=map_location, mmap=mmap)
    metadata = checkpoint.get(METADATA_KEY)
    if metadata is not None and not isinstance(metadata, dict):
        raise StoredConfigError(f"refusing to load checkpoint {path}: its {METADATA_KEY!r} entry is not a mapping")
    source = f"checkpoint {Path(path).expanduser()}"
    check_stored_config(checkpoint_config(checkpoint), source, also_allowed)
    check_stored_config({k: v for k, v in (metadata or {}).items() if k != "config"}, source)
    return checkpoint, checkpoint_config(checkpoint)


def network_state_dict(checkpoint: dict[str, Any], use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The network's weights from a Lightning checkpoint of this framework.

    With the EMA callback, ``state_dict`` holds the averaged weights and ``current_model_state``
    the raw ones (Lightning's ``WeightAveraging`` layout); ``use_ema=False`` picks the raw ones.
    """
    if "state_dict" not in checkpoint:
        raise CheckpointMismatchError("the checkpoint has no 'state_dict'; it is not a Lightning checkpoint")
    state = checkpoint["state_dict"]
    if not use_ema:
        state = checkpoint.get("current_model_state", state)
    return {k[len(NET_PREFIX) :]: v for k, v in state.items() if k.startswith(NET_PREFIX)}


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], limit: int = 8) -> str | None:
    """Human-readable differences between two state dicts, or ``None`` if keys and shapes agree."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return None

    def section(title: str, items: list[str]) -> str:
        more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:limit]) + more

    text = ""
    if missing:
        text += section("missing from the checkpoint", missing)
    if unexpected:
        text += section("in the checkpoint but not in the model", unexpected)
    if shapes:
        text += section("shape mismatches", shapes)
    return text


def load_network_weights(net: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``net`` strictly, or raise :class:`CheckpointMismatchError`."""
    problem = describe_mismatch(net.state_dict(), state_dict)
    if problem:
        raise CheckpointMismatchError(
            f"the weights in {source} do not fit the configured model (a different architecture or preset?):"
            f"{problem}\nBuild the model the checkpoint was trained with (its config is stored inside), "
            "or start a new run."
        )
    net.load_state_dict(state_dict)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the half-written ``.NAME.tmp-PID`` files that a process killed mid-save left beside ``path``.

    Only one process (rank 0) writes a given checkpoint, so any other temporary of it is dead.
    """
    own = f".{path.name}.tmp-{os.getpid()}"
    stale = [p for p in path.parent.glob(f".{path.name}.tmp-*") if p.name != own]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk where the platform allows opening directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, temporary: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on ``temporary`` (created exclusively), fsync it, rename it to ``path``, fsync the folder.

    Readers see the old file or the new one, never a torn one, and the new name survives a power loss.
    The temporary is removed if ``write`` fails; one a killed process leaves stays, for its owner to clean.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL with mode 0o666: a fresh file with the user's umask, like any other file written
    # (tempfile.mkstemp would make it 0600, unreadable to the others sharing a cache).
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`write_atomically`), safe with concurrent writers.

    Unlike :class:`AtomicCheckpointIO`, which only rank 0 calls, several writers of the same path
    (ranks, nodes on a shared file system) may call this at once: each writes its own uniquely named
    temporary and never touches another's; the last rename wins.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    return write_atomically(path, temporary, lambda f: f.write(data))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes ``tmp -> fsync -> rename`` and reads with ``weights_only``.

    A kill at any moment leaves either the previous file or the new one under the final name,
    never a torn one; the temporary a killed save leaves behind is removed by the next save.
    The rename is followed by an fsync of the directory, so the new name survives a power loss.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        # Streamed into the file, not through bytes in memory: a large model's checkpoint is gigabytes.
        # A temporary of this process's own name left by a failed save of this same process is stale too.
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        write_atomically(path, temporary, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        # Lightning restores states and builds nothing from the stored config; train.py has checked
        # that config (read_checkpoint) before it lets Lightning resume.
        return load_checkpoint(path, map_location=map_location or "cpu")
