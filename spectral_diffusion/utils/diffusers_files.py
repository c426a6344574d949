"""Reading diffusers model folders (teachers, autoencoders) without running anything they contain.

A downloaded model folder is untrusted input, like a checkpoint. Before a component (``unet/``,
``vqvae/``, ``vae/``) is handed to diffusers' ``from_pretrained``:

- a hub id is first fetched with ``huggingface_hub.snapshot_download`` restricted to JSON files
  and weights, so no Python file of the repository ever reaches the disk, and the checks below run
  on the local copy;
- the component's ``config.json`` must name one of the expected classes (``_class_name``); a
  config that asks for custom code (``auto_map``, ``_custom_pipeline``) is refused;
- weights are loaded from safetensors where the folder has them; a folder with only pickled
  ``.bin`` weights has each file opened first with ``torch.load(weights_only=True)``, which
  refuses pickled code, and the folder is refused with a clear message if that fails.

Nothing here passes ``trust_remote_code`` or a custom pipeline to diffusers: the classes that are
built are always this framework's choice, never the folder's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from spectral_diffusion.utils.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHTS_STEM = "diffusion_pytorch_model"
#: Keys of a config.json that ask for code from the folder or the hub.
CUSTOM_CODE_KEYS = ("auto_map", "_custom_pipeline", "custom_pipeline", "trust_remote_code")


class DiffusersFolderError(UserError, ValueError):
    """A diffusers model folder that cannot be loaded safely (the message names the file and why)."""


def is_local(path: str) -> bool:
    """A path that exists, or that cannot be a hub id (``org/name``), is a local directory."""
    return Path(path).expanduser().exists() or not _HUB_ID.match(path)


def local_copy(path: str, subfolders: list[str | None]) -> Path:
    """``path`` itself if it is local, else a snapshot of the hub repo holding only JSON and weight files."""
    if is_local(path):
        return Path(path).expanduser()
    patterns = ["model_index.json", "*.json"]
    for sub in subfolders:
        prefix = f"{sub}/" if sub else ""
        patterns += [f"{prefix}*.json", f"{prefix}*.safetensors", f"{prefix}*.bin"]
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=patterns))
    except Exception as err:  # offline, no such repository, no access: hub errors come in many types
        raise DiffusersFolderError(
            f"{path} is not a local directory ({Path(path).expanduser().resolve()} does not exist), and fetching it "
            f"from the hub failed: {type(err).__name__}: {err}. A hub id needs network access or a cached copy; "
            "offline, pass a local directory instead."
        ) from err


def read_config(folder: Path, name: str = "config.json") -> dict[str, Any]:
    """A component's JSON config, refused if it is not a mapping or asks for custom code."""
    config_file = folder / name
    if not config_file.is_file():
        present = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else []
        raise DiffusersFolderError(f"{config_file} does not exist (the folder holds {present})")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DiffusersFolderError(f"cannot read {config_file}: {err}") from err
    if not isinstance(config, dict):
        raise DiffusersFolderError(f"{config_file} holds a {type(config).__name__}, not a JSON object")
    custom = [key for key in CUSTOM_CODE_KEYS if key in config]
    if custom:
        raise DiffusersFolderError(
            f"{config_file} asks for custom code ({', '.join(custom)}); this framework never runs code from a "
            "model folder. Use a folder whose config names a diffusers class."
        )
    return config


def check_component(folder: Path, expected_classes: tuple[str, ...]) -> tuple[str, bool]:
    """``(class name, use_safetensors)`` of a component folder, after the checks in the module doc."""
    if not folder.is_dir():
        raise DiffusersFolderError(
            f"{folder} does not exist" if not folder.exists() else f"{folder} is not a directory"
        )
    config = read_config(folder)
    class_name = config.get("_class_name")
    if class_name not in expected_classes:
        raise DiffusersFolderError(
            f"{folder} holds a {class_name}; supported are {list(expected_classes)} (config.json's _class_name)"
        )
    if list(folder.glob(f"{WEIGHTS_STEM}*.safetensors")):
        return class_name, True
    pickled = sorted(folder.glob(f"{WEIGHTS_STEM}*.bin"))
    if not pickled:
        raise DiffusersFolderError(f"{folder} holds no {WEIGHTS_STEM}.safetensors or .bin weights")
    import zipfile

    import torch

    for file in pickled:
        try:  # memory-mapped where the file is in torch's zip format: only the pickle is read
            torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
        except Exception as err:
            raise DiffusersFolderError(
                f"refusing {file}: it cannot be read with torch.load(weights_only=True) ({type(err).__name__}: "
                f"{err}). It may hold pickled code; convert the weights to safetensors from a source you trust."
            ) from err
    return class_name, False
