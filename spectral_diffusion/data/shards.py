"""Write a DataModule's splits as LitData shard sets (``scripts/write_shards.py``; format: ``shard_format.py``).

``<output>/train`` and ``<output>/val`` become two shard sets, each written by ``litdata.optimize``
in the source's order (``keep_data_ordered``), with its ``spectral_diffusion.json`` sidecar:

- **Images** keep their encoded bytes where the data set has files (folders, zips, lmdb values:
  ``encoding=source``); Fashion-MNIST and CIFAR-10, which ship pixel arrays, store each
  preprocessed 8-bit sample as a lossless PNG (``encoding=png``). Unflipped: flips are drawn when
  the shards are read. A data set with text embeddings adds each image's caption row and the table.
- **Latents** (``data=latents``, a store of ``scripts/encode_latents.py``) keep their raw values and
  dtype; the sidecar carries the normalisation and the first stage, as the store's ``meta.json`` does.

Unreadable images are found before anything is written, by decoding each one as the data module
would (``EncodedImageDataset.load``): with ``on_corrupt=skip`` they are left out, reported in one
warning and listed in the sidecar; with ``on_corrupt=error`` the first one stops the write, named.

**Interruption.** The sidecar is written first with ``complete: false`` and the request that made
it; LitData's ``use_checkpoint`` records the items written. Running the same command again resumes
where the write stopped; a different request for that directory is refused, as is a complete shard
set (unless ``overwrite=true``) and a directory that holds files of anything else.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spectral_diffusion.data.image_dataset import EncodedImageDataset, UnreadableImageError
from spectral_diffusion.data.latents import LatentDataModule
from spectral_diffusion.data.shard_format import (
    FORMAT,
    INDEX,
    KINDS,
    SIDECAR,
    TEXT_EMBEDDINGS,
    ShardSetError,
    encode_png,
    fetch_text,
    is_remote,
    join,
)
from spectral_diffusion.data.text_embeddings import CaptionedDataset

log = logging.getLogger(__name__)

#: How many names of skipped images the warning shows (all are in the sidecar).
NAMES_SHOWN = 5


# -- what one item of a split is ----------------------------------------------------------------------
class SourceBytesItems:
    """Items of an ``EncodedImageDataset``: its files' bytes as they are, and the label."""

    def __init__(self, dataset: EncodedImageDataset, rows: torch.Tensor | None) -> None:
        self.dataset, self.rows = dataset, rows

    def __call__(self, index: int) -> dict[str, Any]:
        item = {"image": self.dataset.source.read(index), "label": self.dataset.label(index), "index": int(index)}
        if self.rows is not None:
            item["context_row"] = int(self.rows[index])
        return item


class PixelItems:
    """Items of an in-memory data set (Fashion-MNIST, CIFAR-10): the preprocessed sample as lossless PNG."""

    def __init__(self, dataset: Dataset, rows: torch.Tensor | None) -> None:
        self.dataset, self.rows = dataset, rows

    def __call__(self, index: int) -> dict[str, Any]:
        image, label = self.dataset[index][:2]
        item = {"image": encode_png(image, f"sample {index}"), "label": int(label), "index": int(index)}
        if self.rows is not None:
            item["context_row"] = int(self.rows[index])
        return item


class LatentItems:
    """Items of a latent store: the raw latent (its stored dtype) and the label."""

    def __init__(self, module: LatentDataModule, split: str) -> None:
        self.store = module.val_store if split == "val" and module.val_store is not None else module.train_store

    def __call__(self, entry: int) -> dict[str, Any]:
        labels = self.store.labels
        return {
            "latent": np.ascontiguousarray(self.store.latents[entry]),
            "label": 0 if labels is None else int(labels[entry]),
            "index": int(entry),
        }


class _Probe(Dataset):
    """``(index, problem)`` for each image of a dataset: ``""`` when it decodes as the data module decodes it."""

    def __init__(self, dataset: EncodedImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, str]:
        try:
            self.dataset.load(index)
        except UnreadableImageError as err:
            return index, str(err)
        return index, ""


def readable_indices(dataset: EncodedImageDataset, num_workers: int, split: str) -> tuple[list[int], list[str]]:
    """``(indices to write, problems of the skipped ones)``; ``on_corrupt=error`` raises at the first problem."""
    from tqdm.auto import tqdm

    loader = DataLoader(_Probe(dataset), batch_size=None, num_workers=num_workers)
    keep, skipped = [], []
    for index, problem in tqdm(loader, total=len(dataset), desc=f"checking {split} images", unit="img"):
        if not problem:
            keep.append(int(index))
        elif dataset.on_corrupt == "error":
            raise UnreadableImageError(f"{problem} (data.on_corrupt=skip would leave it out of the shards)")
        else:
            skipped.append(problem)
    if skipped:
        log.warning(
            "%s: left %d unreadable image(s) out of the shards (data.on_corrupt=error stops at the first): %s",
            split,
            len(skipped),
            "; ".join(skipped[:NAMES_SHOWN]),
        )
    return keep, skipped


# -- one split --------------------------------------------------------------------------------------
def _split_plan(
    datamodule: Any, kind: str, split: str, num_workers: int
) -> tuple[Callable[[int], dict], list[int], dict[str, Any]] | None:
    """``(item function, indices, sidecar fields)`` of one split, or ``None`` when the module has no such split."""
    if kind == "latents":
        entries = datamodule.train_entries if split == "train" else datamodule.val_entries
        if entries is None:
            return None
        store = LatentItems(datamodule, split).store
        fields = {
            "kind": "latents",
            "sample_shape": list(datamodule.image_shape),
            "dtype": str(store.latents.dtype),
            "latent_stats": datamodule.latent_stats,
            "first_stage": datamodule.first_stage_description,
            "num_classes": datamodule.num_classes,
            "has_labels": store.labels is not None,
        }
        return LatentItems(datamodule, split), [int(e) for e in entries], fields
    dataset = datamodule.train_set if split == "train" else datamodule.val_set
    if dataset is None or len(dataset) == 0:
        return None
    rows, text = None, None
    if isinstance(dataset, CaptionedDataset):
        rows, text = dataset.rows, {"captions": list(dataset.table.captions), "encoder": dataset.table.encoder}
        dataset = dataset.images
    fields: dict[str, Any] = {
        "kind": "images",
        "sample_shape": list(datamodule.image_shape),
        "num_classes": getattr(datamodule, "num_classes", None),
        "class_names": list(getattr(datamodule, "class_names", None) or []) or None,
        "text_embeddings": text,
    }
    if isinstance(dataset, EncodedImageDataset):
        indices, skipped = readable_indices(dataset, num_workers, split)
        if not indices:
            raise ShardSetError(f"none of the {len(dataset)} {split} images could be read; nothing to write")
        fields.update(
            encoding="source",
            resolution=int(dataset.transform.resolution),
            small_images=dataset.transform.small_images,
            skipped=skipped,
        )
        return SourceBytesItems(dataset, rows), indices, fields
    fields.update(encoding="png", resolution=int(datamodule.image_shape[-1]), skipped=[])
    return PixelItems(dataset, rows), list(range(len(dataset))), fields


def _put_text(uri: str, text: str, storage_options: dict[str, Any]) -> None:
    """Write a small file into a shard set, atomically when local, through LitData's providers when remote."""
    if not is_remote(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    _put_file_remote(uri, lambda local: Path(local).write_text(text), storage_options)


def _put_file_remote(uri: str, write: Callable[[str], Any], storage_options: dict[str, Any]) -> None:
    from litdata.streaming.fs_provider import _get_fs_provider

    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, os.path.basename(uri))
        write(local)
        _get_fs_provider(uri, storage_options).upload_file(local, uri)


#: What a split directory may hold: LitData's files and ours (anything else is the user's and stays).
_OWN_FILES = (INDEX, SIDECAR, TEXT_EMBEDDINGS, ".checkpoints")


def _foreign_entries(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in _OWN_FILES
        and not (p.name.startswith("chunk-") or p.name.endswith((".lock", ".tmp")))
        and not p.name.startswith(f".{SIDECAR}.tmp")
    )


def _check_target(uri: str, request: dict[str, Any], overwrite: bool, storage_options: dict[str, Any]) -> str | None:
    """LitData's ``mode`` for writing ``uri``: ``None`` (new or resumed) or ``"overwrite"``; refuses the rest."""
    if not is_remote(uri):
        foreign = _foreign_entries(Path(uri))
        if foreign:
            raise ShardSetError(
                f"output {uri} already holds files that are not shards ({', '.join(foreign[:5])}); they are left "
                "alone: choose another output"
            )
    text = fetch_text(join(uri, SIDECAR), None, storage_options)
    meta = json.loads(text) if text else None
    if meta is None:
        if not is_remote(uri) and (Path(uri) / INDEX).is_file():
            raise ShardSetError(
                f"output {uri} holds a LitData dataset that this framework did not write; it is left alone"
            )
        return None
    if meta.get("complete"):
        if not overwrite:
            raise ShardSetError(
                f"output {uri} already holds a complete shard set ({meta.get('count')} items); pass overwrite=true "
                "to replace it, or choose another output"
            )
        return "overwrite"
    if meta.get("request") != request and not overwrite:
        raise ShardSetError(
            f"output {uri} holds an interrupted write of another request ({meta.get('request')}); re-run that "
            "command to finish it, pass overwrite=true to start this one over, or choose another output"
        )
    if meta.get("request") != request:
        return "overwrite"
    log.info("resuming the interrupted write of %s", uri)
    return None


def _optimize(
    output: str,
    items: Callable[[int], dict],
    indices: list[int],
    mode: str | None,
    chunk_bytes: str,
    num_workers: int,
    start_method: str | None,
    storage_options: dict[str, Any],
) -> None:
    import multiprocessing

    import litdata

    # litdata.optimize sets the process-wide start method (set_start_method(..., force=True)); put back the
    # caller's, so that writing shards does not change how the caller's later DataLoaders start workers.
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        litdata.optimize(
            fn=items,
            inputs=indices,
            output_dir=output,
            chunk_bytes=chunk_bytes,
            num_workers=max(1, num_workers),
            reorder_files=False,
            keep_data_ordered=True,  # the source's order, and what use_checkpoint needs
            use_checkpoint=mode is None,  # records progress, so that the same command resumes
            mode=mode,
            start_method=start_method,
            storage_options=storage_options,
            verbose=True,
        )
    finally:
        multiprocessing.set_start_method(previous, force=True)


def write_split(
    datamodule: Any,
    split: str,
    output: str,
    kind: str = "images",
    chunk_bytes: str = "64MB",
    num_workers: int = 1,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    start_method: str | None = None,
    storage_options: dict[str, Any] | None = None,
    random_flip: bool = False,
) -> dict[str, Any] | None:
    """Write one split of a set-up DataModule to the shard set ``output``; its sidecar, or ``None`` without the split.

    ``random_flip`` records whether the source config flipped its training images (the default of
    ``data=streaming``); the images themselves are written unflipped.
    """
    storage_options = dict(storage_options or {})
    plan = _split_plan(datamodule, kind, split, num_workers)
    if plan is None:
        log.info("%s has no %s split: nothing written for it", type(datamodule).__name__, split)
        return None
    items, indices, fields = plan
    request = {
        "kind": kind,
        "split": split,
        "source": source or {},
        "count": len(indices),
        "sample_shape": fields["sample_shape"],
        "encoding": fields.get("encoding"),
    }
    mode = _check_target(output, request, overwrite, storage_options)
    sidecar = {"format": FORMAT, "complete": False, "request": request, "count": len(indices), "split": split}
    sidecar.update(fields, source=source or {}, random_flip=bool(random_flip) and split == "train")
    _put_text(join(output, SIDECAR), json.dumps(sidecar, indent=2) + "\n", storage_options)
    finished = mode is None and fetch_text(join(output, INDEX), None, storage_options) is not None
    if finished:  # killed after LitData's last write (its index) and before the sidecar's
        log.info("%s: LitData's write had finished; completing the shard set", output)
    else:
        _optimize(output, items, indices, mode, chunk_bytes, num_workers, start_method, storage_options)
    if fields.get("text_embeddings"):
        table = datamodule.train_set.table if split == "train" else datamodule.val_set.table

        def save(path: str) -> None:
            with open(path, "wb") as f:  # np.savez appends .npz to a bare path; a file object keeps the name
                np.savez(f, embeddings=table.embeddings.half().numpy(), mask=table.mask.bool().numpy())

        if is_remote(output):
            _put_file_remote(join(output, TEXT_EMBEDDINGS), save, storage_options)
        else:
            save(join(output, TEXT_EMBEDDINGS))
    sidecar["complete"] = True
    _put_text(join(output, SIDECAR), json.dumps(sidecar, indent=2) + "\n", storage_options)
    log.info("wrote %d %s items of %s to %s", len(indices), split, type(datamodule).__name__, output)
    return sidecar


def write_shards(
    datamodule: Any,
    output: str,
    kind: str = "images",
    splits: tuple[str, ...] = ("train", "val"),
    **options: Any,
) -> dict[str, dict[str, Any]]:
    """Write ``<output>/<split>`` for each split the DataModule has; ``{split: sidecar}``. Options: :func:`write_split`."""
    if kind not in KINDS:
        raise ShardSetError(f"kind={kind!r} must be one of {', '.join(KINDS)}")
    if kind == "latents" and not isinstance(datamodule, LatentDataModule):
        raise ShardSetError(
            f"kind=latents writes cached latents: give data=latents data.path=STORE (a store of "
            f"scripts/encode_latents.py), not data={type(datamodule).__name__}"
        )
    if kind == "images" and getattr(datamodule, "provides_latents", False):
        raise ShardSetError("data=latents holds cached latents: write them with kind=latents")
    # Shards hold the images as stored; flips are drawn when they are read (data.random_flip).
    flipping = [m for m in (datamodule, getattr(datamodule, "images", None)) if hasattr(m, "random_flip")]
    random_flip = any(bool(m.random_flip) for m in flipping)
    for module in flipping:
        module.random_flip = False
    datamodule.prepare_data()
    datamodule.setup("fit")
    written = {}
    for split in splits:
        sidecar = write_split(datamodule, split, join(str(output), split), kind, random_flip=random_flip, **options)
        if sidecar is not None:
            written[split] = sidecar
    return written
