"""Encode captions once with a CLIP text encoder: the context of text-conditional training.

    # class names as captions ("a photo of a sneaker"), one row per class (online once: downloads CLIP)
    python scripts/encode_text.py --classes fashion_mnist --out data/fmnist_clip_l14.pt
    # one caption per line, line k for class k
    python scripts/encode_text.py --captions captions.txt --out data/my_clip.pt
    # per-image captions: line i of each file describes image i of that split (the DataModule's order)
    python scripts/encode_text.py --train-captions train.txt --val-captions val.txt --out data/my_clip.pt

``--encoder`` takes a hub id (default ``openai/clip-vit-large-patch14``, 768-wide tokens) or a local
directory with a tokenizer and a model saved by ``save_pretrained``. The output is the table
``spectral_diffusion/data/text_embeddings.py`` documents; train on it with
``python train.py experiment=fmnist_text data.embeddings=PATH`` (``model.context_dim`` must be the
encoder's width, which this script prints). Needs ``pip install -e '.[text]'`` (transformers).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from spectral_diffusion.data.text_embeddings import TextEmbeddings, encode_captions

log = logging.getLogger("encode_text")

DEFAULT_ENCODER = "openai/clip-vit-large-patch14"
DEFAULT_TEMPLATE = "a photo of a {}"


def class_names(dataset: str) -> tuple[str, ...]:
    """The class names of a built-in data set, in label order."""
    if dataset == "fashion_mnist":
        from spectral_diffusion.data.fashion_mnist import CLASS_NAMES
    elif dataset == "cifar10":
        from spectral_diffusion.data.cifar10 import CLASS_NAMES
    else:
        raise ValueError(f"--classes {dataset!r}: choose fashion_mnist or cifar10, or give --captions FILE")
    return CLASS_NAMES


def read_lines(path: str) -> list[str]:
    """Non-empty lines of a caption file (stripped); an error names the file if there are none."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"caption file {file} does not exist")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    if not all(lines) or not lines:
        empty = [i + 1 for i, line in enumerate(lines) if not line]
        raise ValueError(f"caption file {file} has empty lines {empty[:5]} (one caption per line, none empty)")
    return lines


def build_table(args: argparse.Namespace) -> tuple[list[str], str, dict[str, torch.Tensor]]:
    """``(distinct captions, by, index)`` from the command line's caption source."""
    if args.classes:
        names = class_names(args.classes)
        return [args.template.format(name.lower()) for name in names], "label", {}
    if args.captions:
        return read_lines(args.captions), "label", {}
    train, val = read_lines(args.train_captions), read_lines(args.val_captions)
    captions = sorted(set(train) | set(val))
    row = {caption: i for i, caption in enumerate(captions)}
    index = {split: torch.tensor([row[c] for c in lines]) for split, lines in (("train", train), ("val", val))}
    return captions, "image", index


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--classes", help="captions from the class names of fashion_mnist or cifar10")
    source.add_argument("--captions", help="a file of captions, line k for class k")
    source.add_argument("--train-captions", help="per-image captions of the train split, one per line")
    parser.add_argument("--val-captions", help="per-image captions of the validation split (with --train-captions)")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="caption of a class name (with --classes)")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER, help="hub id or local directory of the text encoder")
    parser.add_argument("--out", required=True, help="the text-embedding file to write (.pt)")
    parser.add_argument("--padding", default="longest", choices=("longest", "max_length"))
    parser.add_argument("--max-length", type=int, default=None, help="token limit (default: the tokenizer's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.train_captions and not args.val_captions:
        parser.error("--train-captions needs --val-captions")
    if args.val_captions and not args.train_captions:
        parser.error("--val-captions goes with --train-captions")
    if "{}" not in args.template:
        parser.error(f"--template {args.template!r} must contain {{}} where the class name goes")
    return args


def main(argv: list[str] | None = None) -> TextEmbeddings:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    captions, by, index = build_table(args)
    embeddings, mask = encode_captions(
        captions, args.encoder, device=args.device, padding=args.padding, max_length=args.max_length
    )
    table = TextEmbeddings(embeddings, mask, captions, encoder=args.encoder, by=by, index=index)
    path = table.save(args.out)
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


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as err:
        sys.exit(f"encode_text: {err}")
