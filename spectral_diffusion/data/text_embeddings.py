"""Precomputed text embeddings as the conditioning context of an image data set.

A text encoder (CLIP's, through ``scripts/encode_text.py``) runs once, offline from training; the
training batches then carry its token embeddings next to the images:
``(image, label, context (L, D), context_mask (L,))``, which ``DiffusionModule`` hands to a UNet
built with ``context_dim=D`` (its cross-attention path).

The table is small because it stores each distinct *caption* once, not each image:

- ``by="label"``: caption ``k`` describes class ``k`` (e.g. "a photo of a sneaker"); an image's
  caption is its label's. Fashion-MNIST's 60,000 images need 10 rows.
- ``by="image"``: per split, ``index[split][i]`` is the caption row of the split's ``i``-th image
  (in the image DataModule's own order), for data sets with per-image captions.

File format (``torch.save`` of a dict, read back with ``weights_only=True``)::

    format      "spectral_diffusion.text_embeddings/1"
    embeddings  float16 (K, L, D)   the encoder's last hidden states, padded to L tokens
    mask        bool (K, L)         True at real tokens (the tokenizer's attention_mask)
    captions    list of K strings
    encoder     str                 the text encoder's hub id or path
    by          "label" | "image"
    index       {"train": int64 (N,), "val": int64 (M,)}   only with by="image"
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from torch.utils.data import Dataset

from spectral_diffusion.data.base import BaseDataModule

log = logging.getLogger(__name__)

FORMAT = "spectral_diffusion.text_embeddings/1"
HOW_TO_MAKE = (
    "Write one with scripts/encode_text.py (a CLIP text encoder from transformers, online once), e.g.\n"
    "  python scripts/encode_text.py classes=fashion_mnist output=data/fmnist_clip_l14.pt"
)


class TextEmbeddingsError(ValueError):
    """A text-embedding file is missing or does not fit the images (the message names the file)."""


@dataclass
class TextEmbeddings:
    """A table of caption embeddings and how images map to its rows (see the module doc)."""

    embeddings: torch.Tensor
    mask: torch.Tensor
    captions: list[str]
    encoder: str = ""
    by: str = "label"
    index: dict[str, torch.Tensor] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        where = self.source
        if self.embeddings.ndim != 3:
            raise TextEmbeddingsError(
                f"{where}: embeddings must be (captions, tokens, dim), got {tuple(self.embeddings.shape)}"
            )
        if tuple(self.mask.shape) != tuple(self.embeddings.shape[:2]):
            raise TextEmbeddingsError(
                f"{where}: mask has shape {tuple(self.mask.shape)}, expected {tuple(self.embeddings.shape[:2])} (captions, tokens)"
            )
        if len(self.captions) != self.embeddings.shape[0]:
            raise TextEmbeddingsError(
                f"{where}: {len(self.captions)} captions for {self.embeddings.shape[0]} embedding rows"
            )
        if not self.mask.bool().any(dim=1).all():
            raise TextEmbeddingsError(f"{where}: some captions have no token in mask; every caption needs at least one")
        if self.by not in ("label", "image"):
            raise TextEmbeddingsError(f"{where}: by={self.by!r} must be 'label' or 'image'")
        if self.by == "image":
            for split in ("train", "val"):
                ids = self.index.get(split)
                if ids is None:
                    raise TextEmbeddingsError(f"{where}: by='image' needs index['{split}'] (caption row of each image)")
                if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self.captions)):
                    raise TextEmbeddingsError(
                        f"{where}: index['{split}'] points outside the {len(self.captions)} captions"
                    )
        self.mask = self.mask.bool()

    @property
    def context_dim(self) -> int:
        """The width ``D`` a network's ``context_dim`` must have."""
        return int(self.embeddings.shape[2])

    def save(self, path: str | Path) -> Path:
        """Write the table atomically (temporary file, then rename); returns the path."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT,
            "embeddings": self.embeddings.to(torch.float16).contiguous(),
            "mask": self.mask.contiguous(),
            "captions": list(self.captions),
            "encoder": self.encoder,
            "by": self.by,
            "index": {k: v.long() for k, v in self.index.items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextEmbeddings:
        path = Path(path).expanduser()
        if not path.is_file():
            raise TextEmbeddingsError(f"text embeddings {path} do not exist.\n{HOW_TO_MAKE}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated file, or not a torch file at all
            raise TextEmbeddingsError(f"cannot read text embeddings {path}: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise TextEmbeddingsError(
                f"{path} is not a text-embedding file (format {found!r}, expected {FORMAT!r}).\n{HOW_TO_MAKE}"
            )
        return cls(
            embeddings=payload["embeddings"],
            mask=payload["mask"],
            captions=list(payload["captions"]),
            encoder=str(payload.get("encoder", "")),
            by=str(payload.get("by", "label")),
            index=dict(payload.get("index") or {}),
            source=str(path),
        )

    def rows_for(self, split: str, labels: torch.Tensor | None, count: int) -> torch.Tensor:
        """The caption row of each of the ``count`` images of ``split`` (``labels`` for ``by="label"``)."""
        if self.by == "image":
            ids = self.index[split]
            if len(ids) != count:
                raise TextEmbeddingsError(
                    f"{self.source}: index['{split}'] has {len(ids)} entries but the {split} split has {count} images; "
                    "the captions were written for another data set or split"
                )
            return ids.long()
        if labels is None:
            raise TextEmbeddingsError(f"{self.source}: captions by label need a labelled data set")
        labels = labels.long()
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.captions)):
            bad = labels[(labels < 0) | (labels >= len(self.captions))][0]
            raise TextEmbeddingsError(
                f"{self.source}: the {split} split has label {int(bad)} but there are captions for labels "
                f"0..{len(self.captions) - 1} only"
            )
        return labels


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Every label of an ``(image, label)`` dataset: its ``labels`` attribute, else read item by item."""
    if hasattr(dataset, "labels"):
        if dataset.labels is None:
            raise TextEmbeddingsError(
                f"{type(dataset).__name__} has no labels, so captions by label cannot be matched to its images; "
                "write per-image captions (scripts/encode_text.py train_captions=FILE val_captions=FILE)"
            )
        return torch.as_tensor(dataset.labels).long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


class CaptionedDataset(Dataset):
    """``(image, label)`` items of ``images`` as ``(image, label, context, context_mask)``."""

    def __init__(self, images: Dataset, table: TextEmbeddings, rows: torch.Tensor) -> None:
        self.images, self.table, self.rows = images, table, rows

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        image, label = self.images[index][:2]
        row = int(self.rows[index])
        return image, label, self.table.embeddings[row].float(), self.table.mask[row]


class TextEmbeddingDataModule(BaseDataModule):
    """An image DataModule whose batches also carry each image's caption embeddings.

    Args:
        embeddings: the text-embedding file (module doc; ``scripts/encode_text.py`` writes it).
        images: the image DataModule, or the import path of its class; in the latter case the
            remaining keyword arguments build it, so a config reads like the image data set's
            own (``data.root``, ``data.batch_size``, ...) plus ``embeddings``.
        **image_kwargs: arguments of the image DataModule.

    Loader settings (batch size, workers) are the image DataModule's.
    """

    def __init__(
        self,
        embeddings: str,
        images: str | BaseDataModule = "spectral_diffusion.data.FashionMNISTDataModule",
        **image_kwargs: Any,
    ) -> None:
        if isinstance(images, str):
            images = hydra.utils.get_class(images)(**image_kwargs)
        elif image_kwargs:
            raise ValueError(f"arguments {sorted(image_kwargs)} given with an already built image DataModule")
        super().__init__(images.batch_size, images.num_workers, images.pin_memory, images.persistent_workers)
        self.images = images
        self.table = TextEmbeddings.load(embeddings)
        log.info(
            "text embeddings %s: %d captions by %s, %d tokens x %d (%s)",
            embeddings,
            len(self.table.captions),
            self.table.by,
            self.table.embeddings.shape[1],
            self.table.context_dim,
            self.table.encoder or "encoder unknown",
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.images.image_shape

    @property
    def num_classes(self) -> int | None:
        return getattr(self.images, "num_classes", None)

    @property
    def class_names(self) -> Sequence[str] | None:
        return getattr(self.images, "class_names", None)

    @property
    def context_dim(self) -> int:
        return self.table.context_dim

    def prepare_data(self) -> None:
        self.images.prepare_data()

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        self.images.setup("fit")
        sets = []
        for split, dataset in (("train", self.images.train_set), ("val", self.images.val_set)):
            labels = dataset_labels(dataset) if self.table.by == "label" else None
            sets.append(CaptionedDataset(dataset, self.table, self.table.rows_for(split, labels, len(dataset))))
        return sets[0], sets[1]


@torch.no_grad()
def encode_captions(
    captions: Sequence[str],
    encoder: str,
    device: str | torch.device = "cpu",
    padding: str = "longest",
    max_length: int | None = None,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings float32 (K, L, D), mask bool (K, L))`` of ``captions`` from a transformers text encoder.

    ``encoder`` is a hub id (``openai/clip-vit-large-patch14``, online) or a local directory with
    the tokenizer and the model. CLIP checkpoints load their text tower (``CLIPTextModel``); other
    models load through ``AutoModel`` (an encoder-decoder's encoder is used). The embeddings are
    the last hidden states, one per token, as LDM and Stable Diffusion condition on them.

    ``padding="longest"`` pads to the longest caption (short sequences, cheap cross-attention);
    ``"max_length"`` to the tokenizer's length (77 for CLIP), as Stable Diffusion does.
    """
    try:
        import transformers
    except ImportError as err:
        raise ImportError("encoding captions needs transformers: pip install -e '.[text]'") from err
    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding={padding!r} must be 'longest' or 'max_length'")
    if not captions:
        raise ValueError("no captions to encode")
    tokenizer = transformers.AutoTokenizer.from_pretrained(encoder)
    config = transformers.AutoConfig.from_pretrained(encoder)
    if config.model_type in ("clip", "clip_text_model"):
        model = transformers.CLIPTextModel.from_pretrained(encoder)
    else:
        model = transformers.AutoModel.from_pretrained(encoder)
        model = model.get_encoder() if getattr(config, "is_encoder_decoder", False) else model
    model.to(device).eval()
    max_length = max_length or min(int(tokenizer.model_max_length), 512)
    # With "longest", pad every batch to the longest caption of *all* of them: one table, one L.
    tokens = tokenizer(list(captions), padding=padding, max_length=max_length, truncation=True, return_tensors="pt")
    embeddings = []
    for start in range(0, len(captions), batch_size):
        ids = tokens["input_ids"][start : start + batch_size].to(device)
        mask = tokens["attention_mask"][start : start + batch_size].to(device)
        embeddings.append(model(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu())
    return torch.cat(embeddings), tokens["attention_mask"].bool()
