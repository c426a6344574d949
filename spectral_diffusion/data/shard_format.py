"""What a shard set written by ``scripts/write_shards.py`` holds, how it is checked, and how a sample is decoded.

A shard set is one LitData optimized dataset (``index.json`` and ``chunk-*.bin``, written by
``litdata.optimize``) plus a sidecar, ``spectral_diffusion.json``, that says what the samples are:

- ``kind``: ``images`` or ``latents``;
- ``encoding`` of images: ``source`` (the data set's own file bytes, JPEG/PNG/WebP/..., decoded and
  cropped/resized at read time exactly as ``image_dataset.EncodedImageDataset`` does) or ``png``
  (the data module's preprocessed 8-bit sample, stored losslessly: Fashion-MNIST and CIFAR-10 ship
  pixel arrays, not files);
- ``sample_shape``: ``(C, H, W)`` of one decoded sample; for latents also their ``latent_stats``,
  ``dtype`` and the ``first_stage`` that encoded them;
- ``text_embeddings``: the caption table (``text_embeddings.npz``, read with ``allow_pickle=False``)
  when the source data carries contexts; each sample then holds its caption row;
- ``source``: the data config it was written from, ``skipped``: the unreadable images left out.

Each item is a dict of plain fields: ``image`` (bytes) or ``latent`` (a numpy array), ``label`` and
``index`` (the sample's index in the source split) as ints, ``context_row`` as an int with captions.

**A shard set is untrusted input.** LitData deserialises each field with the serializer that
``index.json`` names, and two of its serializers (``pickle``, and ``graph``, which falls back to
pickle) would run code from the file. So ``index.json`` is read as JSON first and every field must
use one of :data:`SAFE_DATA_FORMATS` (bytes, ints, numpy arrays); and the StreamingDataset is given
:data:`REFUSING_SERIALIZERS`, which replace the unpickling serializers by ones that raise, in case a
check were ever bypassed.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata.streaming.serializers import Serializer
from PIL import Image

from spectral_diffusion.data.image_dataset import decode_image
from spectral_diffusion.data.transforms import ImageTransform
from spectral_diffusion.utils.errors import UserError

FORMAT = "spectral_diffusion.shards/1"
SIDECAR = "spectral_diffusion.json"
INDEX = "index.json"
TEXT_EMBEDDINGS = "text_embeddings.npz"
KINDS = ("images", "latents")
ENCODINGS = ("source", "png")
#: LitData serializer names (before any ``:`` suffix) that decode without running code.
SAFE_DATA_FORMATS = frozenset({"bytes", "int", "numpy", "no_header_numpy", "str"})
#: The item loader this format writes (LitData's default for dict items).
ITEM_LOADER = "PyTreeLoader"
HOW_TO_WRITE = "write shards with: python scripts/write_shards.py data=NAME output=DIR"


class ShardSetError(UserError, ValueError):
    """A shard set is missing, incomplete, unsafe or does not fit the run (the message names it)."""


class _RefusedSerializer(Serializer):
    """Stands in for LitData's unpickling serializers: a shard set never gets to unpickle."""

    def __init__(self, name: str) -> None:
        self.name = name

    def serialize(self, item: Any) -> tuple[bytes, str | None]:
        raise ShardSetError(f"the {self.name!r} serializer is not used for shards: it would unpickle on reading")

    def deserialize(self, data: bytes) -> Any:
        raise ShardSetError(f"refusing to unpickle a shard field ({self.name!r} serializer): shards are untrusted")

    def can_serialize(self, item: Any) -> bool:
        return False


def refusing_serializers() -> dict[str, Serializer]:
    """The ``serializers=`` of every StreamingDataset here (a fresh dict: LitData fills in the rest)."""
    return {"pickle": _RefusedSerializer("pickle"), "graph": _RefusedSerializer("graph")}


def join(base: str, name: str) -> str:
    """``base/name`` for local paths and URIs (``s3://bucket/x``, ``local:/x``) alike."""
    return f"{base.rstrip('/')}/{name}"


def is_remote(path: str) -> bool:
    """A URI LitData downloads from (``s3://``, ``gs://``, ``local:`` ...), rather than a directory read in place."""
    return "://" in path or path.startswith("local:")


def fetch_text(uri: str, cache_dir: str | None, storage_options: dict[str, Any] | None = None) -> str | None:
    """The text of a file in a shard set (``None`` if it is not there), through LitData's downloaders."""
    data = fetch_bytes(uri, cache_dir, storage_options)
    return None if data is None else data.decode()


def fetch_bytes(uri: str, cache_dir: str | None, storage_options: dict[str, Any] | None = None) -> bytes | None:
    """The bytes of a (small) file of a shard set, ``None`` if there is no such file.

    A remote file is downloaded into a folder of this process's own (below ``cache_dir`` when given)
    and removed again: the DDP ranks of one node each read their copy, and none is ever stale.
    """
    if not is_remote(uri):
        path = Path(uri).expanduser()
        return path.read_bytes() if path.is_file() else None
    from litdata.streaming.downloader import get_downloader

    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".sidecar-") as folder:
        local = os.path.join(folder, os.path.basename(uri))
        try:
            get_downloader(uri.rsplit("/", 1)[0], folder, [], storage_options or {}).download_file(uri, local)
        except FileNotFoundError:
            return None
        except Exception as err:  # botocore / fsspec errors: no credentials, no bucket, no network
            raise ShardSetError(f"cannot read {uri}: {type(err).__name__}: {err}") from err
        return Path(local).read_bytes() if os.path.isfile(local) else None


def read_index(input_dir: str, cache_dir: str | None, storage_options: dict[str, Any] | None = None) -> dict:
    """LitData's ``index.json`` of ``input_dir``, checked to decode without running code."""
    uri = join(input_dir, INDEX)
    text = fetch_text(uri, cache_dir, storage_options)
    if text is None:
        raise ShardSetError(f"{input_dir} holds no LitData index ({INDEX}): it is not a shard set; {HOW_TO_WRITE}")
    try:
        index = json.loads(text)
        config = index["config"]
        formats = list(config["data_format"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ShardSetError(f"{uri} is not a LitData index ({type(err).__name__}: {err}); {HOW_TO_WRITE}") from err
    unsafe = [f for f in formats if str(f).split(":", 1)[0] not in SAFE_DATA_FORMATS]
    if unsafe:
        raise ShardSetError(
            f"{uri} stores fields with the serializer(s) {unsafe}; shards are read only with "
            f"{sorted(SAFE_DATA_FORMATS)}, since other serializers may unpickle (run code from the file). "
            f"Re-write the shards with scripts/write_shards.py"
        )
    if config.get("item_loader") not in (None, ITEM_LOADER):
        raise ShardSetError(f"{uri}: item_loader={config.get('item_loader')!r}, expected {ITEM_LOADER}; {HOW_TO_WRITE}")
    return index


def read_sidecar(input_dir: str, cache_dir: str | None, storage_options: dict[str, Any] | None = None) -> dict:
    """The ``spectral_diffusion.json`` of a complete shard set, checked."""
    uri = join(input_dir, SIDECAR)
    text = fetch_text(uri, cache_dir, storage_options)
    if text is None:
        raise ShardSetError(
            f"{uri} is missing: {input_dir} is not a complete shard set of this framework (an interrupted "
            f"write_shards.py resumes when run again with the same command); {HOW_TO_WRITE}"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ShardSetError(f"cannot read {uri}: {err}") from err
    if meta.get("format") != FORMAT:
        raise ShardSetError(f"{uri}: format {meta.get('format')!r} is not {FORMAT!r}; {HOW_TO_WRITE}")
    if not meta.get("complete"):
        raise ShardSetError(
            f"{uri} says the write did not finish; run the same write_shards.py command again to complete it"
        )
    if meta.get("kind") not in KINDS or (meta["kind"] == "images" and meta.get("encoding") not in ENCODINGS):
        raise ShardSetError(f"{uri}: kind={meta.get('kind')!r} / encoding={meta.get('encoding')!r} are not known")
    return meta


def to_signed_unit(pixels: np.ndarray) -> torch.Tensor:
    """8-bit pixels ``(H, W)`` or ``(H, W, C)`` as float ``(C, H, W)`` in [-1, 1], with the data modules' arithmetic."""
    tensor = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return tensor.float().div_(127.5).sub_(1.0)


def encode_png(sample: torch.Tensor, name: str) -> bytes:
    """A preprocessed sample ``(C, H, W)`` in [-1, 1] as lossless 8-bit PNG bytes (1 or 3 channels).

    The image data modules make every sample as ``k / 127.5 - 1`` for 8-bit ``k``; a sample that is
    not so (it would not survive the round trip) is refused rather than stored approximately.
    """
    if sample.ndim != 3 or sample.shape[0] not in (1, 3):
        raise ShardSetError(f"{name}: samples of shape {tuple(sample.shape)} cannot be stored as 8-bit images")
    pixels = sample.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    if not torch.equal(to_signed_unit(array), sample.float()):
        raise ShardSetError(f"{name}: the sample is not 8-bit (k / 127.5 - 1); it cannot be stored exactly")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


class SampleDecoder:
    """Turns a stored item into the tensors a batch holds (the module doc's decode), picklable for workers.

    Args:
        meta: the shard set's sidecar.
        resolution: the output side for ``encoding=source`` (the shards' own).
        small_images: the policy for ``encoding=source`` images below ``resolution``.
        text_table: ``(embeddings float16 (K, L, D), mask bool (K, L))`` for shard sets with captions.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        resolution: int | None = None,
        small_images: str = "upscale",
        text_table: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.kind, self.encoding = meta["kind"], meta.get("encoding")
        self.transform = ImageTransform(resolution, small_images) if self.encoding == "source" else None
        if self.kind == "latents":
            stats = meta["latent_stats"]
            channels = int(meta["sample_shape"][0])
            self.shift = np.asarray(stats["shift"], dtype=np.float32).reshape(channels, 1, 1)
            self.scale = np.asarray(stats["scale"], dtype=np.float32).reshape(channels, 1, 1)
        self.text_table = text_table

    def sample(self, item: dict[str, Any], name: str) -> torch.Tensor:
        """The image in [-1, 1], or the normalised latent, of ``item`` (no augmentation)."""
        if self.kind == "latents":
            raw = np.asarray(item["latent"], dtype=np.float32)
            return torch.from_numpy((raw - self.shift) / self.scale)  # as LatentStore.normalised
        data = bytes(item["image"])
        if self.encoding == "source":
            return self.transform(decode_image(data, name), name)
        return to_signed_unit(np.asarray(decode_image(data, name)))

    def context(self, item: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, mask = self.text_table
        row = int(item["context_row"])
        return torch.from_numpy(embeddings[row]).float(), torch.from_numpy(mask[row])


def load_text_table(
    input_dir: str, cache_dir: str | None, storage_options: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, mask)`` of a shard set's caption table, read without unpickling."""
    uri = join(input_dir, TEXT_EMBEDDINGS)
    data = fetch_bytes(uri, cache_dir, storage_options)
    if data is None:
        raise ShardSetError(f"{uri} is missing although {join(input_dir, SIDECAR)} says the shards carry captions")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as table:
            return np.asarray(table["embeddings"]), np.asarray(table["mask"]).astype(bool)
    except (OSError, ValueError, KeyError) as err:
        raise ShardSetError(f"cannot read {uri}: {err}") from err
