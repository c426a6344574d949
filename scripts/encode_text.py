"""Encode captions once with a CLIP text encoder: the context of text-conditional training.

    # class names as captions ("a photo of a sneaker"), one row per class (online once: downloads CLIP)
    python scripts/encode_text.py classes=fashion_mnist output=data/fmnist_clip_l14.pt
    # one caption per line, line k for class k
    python scripts/encode_text.py captions=captions.txt output=data/my_clip.pt
    # per-image captions: line i of each file describes image i of that split (the DataModule's order)
    python scripts/encode_text.py train_captions=train.txt val_captions=val.txt output=data/my_clip.pt

The config is ``configs/encode_text.yaml``. ``encoder`` takes a hub id (default
``openai/clip-vit-large-patch14``, 768-wide tokens) or a local directory with a tokenizer and a
model saved by ``save_pretrained``. The output is the table ``spectral_diffusion/data/text_embeddings.py``
documents; train on it with ``python train.py experiment=fmnist_text data.embeddings=PATH``
(``model.context_dim`` must be the encoder's width, which this script prints). Needs
``pip install -e '.[text]'`` (transformers). A config that cannot work ends with status 2 and one
message naming the key (``utils/cli.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from spectral_diffusion.data.text_embeddings import TextEmbeddings, encode_captions
from spectral_diffusion.utils.cli import report_user_errors, run
from spectral_diffusion.utils.run import register_resolvers, task_wrapper

log = logging.getLogger("encode_text")
register_resolvers()

SOURCES = ("classes", "captions", "train_captions")
PADDINGS = ("longest", "max_length")


class ConfigError(ValueError):
    """The config asks for something this script cannot do (the message names the key)."""


def class_names(dataset: str) -> tuple[str, ...]:
    """The class names of a built-in data set, in label order."""
    if dataset == "fashion_mnist":
        from spectral_diffusion.data.fashion_mnist import CLASS_NAMES
    elif dataset == "cifar10":
        from spectral_diffusion.data.cifar10 import CLASS_NAMES
    else:
        raise ConfigError(f"classes={dataset!r}: choose fashion_mnist or cifar10, or give captions=FILE")
    return CLASS_NAMES


def read_lines(key: str, path: str) -> list[str]:
    """Non-empty lines of a caption file (stripped); an error names the key and the file if there are none."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{key}={path}: the caption file {file} does not exist")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    if not all(lines) or not lines:
        empty = [i + 1 for i, line in enumerate(lines) if not line]
        raise ConfigError(f"{key}={path} has empty lines {empty[:5]} (one caption per line, none empty)")
    return lines


def check_config(cfg: DictConfig) -> None:
    """Exactly one caption source, and options that fit it."""
    given = [key for key in SOURCES if cfg.get(key)]
    if len(given) != 1:
        said = f"{' and '.join(given)} are both set" if given else "none is set"
        raise ConfigError(
            f"give exactly one caption source, classes=NAME, captions=FILE or train_captions=FILE: {said}"
        )
    if cfg.train_captions and not cfg.val_captions:
        raise ConfigError("train_captions needs val_captions=FILE (the validation split's captions)")
    if cfg.val_captions and not cfg.train_captions:
        raise ConfigError("val_captions goes with train_captions=FILE")
    if "{}" not in str(cfg.template):
        raise ConfigError(f"template={cfg.template!r} must contain {{}} where the class name goes")
    if not cfg.output:
        raise ConfigError("give the file to write: output=PATH.pt")
    if cfg.padding not in PADDINGS:
        raise ConfigError(f"padding={cfg.padding!r} must be one of {', '.join(PADDINGS)}")
    limit = cfg.max_length
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"max_length={limit!r} must be a positive integer, or null for the tokenizer's")


def build_table(cfg: DictConfig) -> tuple[list[str], str, dict[str, torch.Tensor]]:
    """``(distinct captions, by, index)`` from the config's caption source."""
    if cfg.classes:
        names = class_names(cfg.classes)
        return [str(cfg.template).format(name.lower()) for name in names], "label", {}
    if cfg.captions:
        return read_lines("captions", cfg.captions), "label", {}
    train, val = read_lines("train_captions", cfg.train_captions), read_lines("val_captions", cfg.val_captions)
    captions = sorted(set(train) | set(val))
    row = {caption: i for i, caption in enumerate(captions)}
    index = {split: torch.tensor([row[c] for c in lines]) for split, lines in (("train", train), ("val", val))}
    return captions, "image", index


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r} is not a torch device (auto, cpu, cuda, ...): {err}") from err


@task_wrapper
def encode_text(cfg: DictConfig) -> TextEmbeddings:
    """Encode the configured captions and write the table to ``output``; return the table."""
    check_config(cfg)
    device = resolve_device(str(cfg.device))
    captions, by, index = build_table(cfg)
    try:
        embeddings, mask = encode_captions(
            captions, str(cfg.encoder), device=device, padding=cfg.padding, max_length=cfg.max_length
        )
    except ImportError as err:  # transformers is an extra
        raise ConfigError(str(err)) from err
    except OSError as err:  # transformers' "cannot find / download this model", in its own words
        raise ConfigError(f"encoder={cfg.encoder} cannot be loaded: {err}") from err
    table = TextEmbeddings(embeddings, mask, captions, encoder=str(cfg.encoder), by=by, index=index)
    path = table.save(cfg.output)
    log.info(
        "wrote %s: %d captions by %s, %d tokens of width %d (set model.context_dim=%d)",
        path,
        len(captions),
        by,
        embeddings.shape[1],
        table.context_dim,
        table.context_dim,
    )
    return table


@hydra.main(version_base="1.3", config_path="../configs", config_name="encode_text")
@report_user_errors
def main(cfg: DictConfig) -> None:
    encode_text(cfg)


if __name__ == "__main__":
    run(main)
