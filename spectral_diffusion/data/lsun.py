"""LSUN scenes (e.g. ``church_outdoor``), from the original lmdb databases or a folder export.

The original release (github.com/fyu/lsun) is one lmdb database per category and split,
``<category>_train_lmdb/`` and ``<category>_val_lmdb/``, each a folder with ``data.mdb`` and
``lock.mdb``. Keys are the image ids (ASCII bytes), values the encoded images (WebP or JPEG;
Pillow recognises either from its bytes).

Where the data is looked for, in ``data.root``:

1. ``<category>_train_lmdb/`` (and ``<category>_val_lmdb/``), the release itself;
2. ``<category>_train/`` (and ``<category>_val/``), folders of images, e.g. from lsun's
   ``data.py export``;
3. ``data.root`` itself when it is an lmdb database (``data.mdb`` inside), whose sibling
   ``..._val_lmdb`` is the validation split if it is there;
4. ``data.root`` itself as a folder of images of the category.

Without a validation database or folder, ``val_size`` images (default 300, as many as LSUN's
scene validation sets hold) are held out of the training split
by a permutation seeded with ``split_seed``.

Databases are opened read-only, once in each process (``sources.shared_lmdb``). Their key list is
read once with a key-only cursor and cached next to the database as ``<database>_keys.txt``
(hex keys, stamped with the size and modification time of ``data.mdb``, so a changed database is
listed again); where that folder is not writable the keys stay in memory. A file that is not an
lmdb database, or a database whose first values are not images (another project's layout), is
refused with the expected layout; single bad values are left to ``data.on_corrupt``.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from spectral_diffusion.data.base import DataNotFoundError, EncodedImageDataModule, holdout_split, require_root, take
from spectral_diffusion.data.sources import FolderSource, ImageSource, LmdbSource, list_folder_images, shared_lmdb

log = logging.getLogger(__name__)

_CACHE_FORMAT = "# lmdb keys v1 hex"
#: How many values ``check_lmdb_values`` looks at before calling a database not one of images.
PROBED_VALUES = 8


def layout(category: str) -> str:
    """The expected layouts, for error messages."""
    return f"""Expected layout (data.category={category}):
  ROOT/{category}_train_lmdb/data.mdb, lock.mdb     the original LSUN release (github.com/fyu/lsun)
  ROOT/{category}_val_lmdb/data.mdb, lock.mdb       (optional; else data.val_size images are held out)
or folders of images (e.g. from lsun's `data.py export`):
  ROOT/{category}_train/**/<id>.webp   and optionally ROOT/{category}_val/
or data.root set to the train lmdb folder itself, or to a folder of the category's images."""


@dataclass(frozen=True)
class LsunSplit:
    """Where one split is: ``kind`` is ``lmdb`` (a database folder) or ``folder`` (a tree of images)."""

    kind: str
    path: Path


def locate_lsun(root: str | Path | None, category: str) -> tuple[LsunSplit, LsunSplit | None]:
    """``(train, validation or None)`` in ``root``, in the order of the module doc."""
    path = require_root(root, "LSUN", layout(category))
    if (path / "data.mdb").is_file():
        sibling = path.parent / path.name.replace("_train_lmdb", "_val_lmdb")
        has_val = path.name.endswith("_train_lmdb") and (sibling / "data.mdb").is_file()
        return LsunSplit("lmdb", path), LsunSplit("lmdb", sibling) if has_val else None
    if not path.is_dir():
        raise DataNotFoundError(f"data.root={path} is not a folder.\n{layout(category)}")

    def find(split: str) -> LsunSplit | None:
        database = path / f"{category}_{split}_lmdb"
        if database.is_dir():
            if not (database / "data.mdb").is_file():
                raise DataNotFoundError(f"{database} has no data.mdb: not an lmdb database.\n{layout(category)}")
            return LsunSplit("lmdb", database)
        folder = path / f"{category}_{split}"
        return LsunSplit("folder", folder) if folder.is_dir() else None

    train = find("train")
    if train is not None:
        return train, find("val")
    others = sorted(p.name for p in path.iterdir() if p.name.endswith("_lmdb"))
    if others:
        raise DataNotFoundError(
            f"data.root={path} has no {category}_train_lmdb for data.category={category}; "
            f"it has {', '.join(others)}.\n{layout(category)}"
        )
    return LsunSplit("folder", path), None


def _stamp(database: Path) -> str:
    stat = (database / "data.mdb").stat()
    return f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}"


def key_cache_path(database: Path) -> Path:
    """Where the key list of ``database`` is cached: ``<database>_keys.txt`` beside it."""
    return database.parent / f"{database.name}_keys.txt"


def _read_key_cache(cache: Path, header: str) -> list[bytes] | None:
    try:
        lines = cache.read_text().splitlines()
    except OSError:
        return None
    if not lines or lines[0] != header:
        return None  # another format, or the database changed since
    try:
        return [bytes.fromhex(line) for line in lines[1:]]
    except ValueError:
        return None


def _write_key_cache(cache: Path, header: str, keys: list[bytes]) -> None:
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text("\n".join([header, *(key.hex() for key in keys)]) + "\n")
        os.replace(tmp, cache)  # atomic: ranks that list at the same time write the same file
    except OSError as err:
        log.info("cannot cache the lmdb keys at %s (%s); they stay in memory", cache, err)
        tmp.unlink(missing_ok=True)


def lmdb_keys(database: str | Path) -> list[bytes]:
    """Every key of ``database`` in lmdb's (sorted) order, from the cache or a key-only cursor."""
    database = Path(database)
    cache = key_cache_path(database)
    header = f"{_CACHE_FORMAT} {_stamp(database)}"
    keys = _read_key_cache(cache, header)
    if keys is not None:
        return keys
    with shared_lmdb(database).begin(write=False) as txn:
        keys = list(txn.cursor().iternext(keys=True, values=False))
    _write_key_cache(cache, header, keys)
    return keys


def check_lmdb_values(database: Path, keys: list[bytes], category: str) -> None:
    """``DataNotFoundError`` unless one of the first ``PROBED_VALUES`` values is an image Pillow recognises.

    A database of another layout (pickled arrays, a key index, sub-databases) would otherwise only
    show up as every image being "corrupt"; a few corrupt values among good ones are left to
    ``data.on_corrupt``. Only the headers are parsed, so this costs a few small reads.
    """
    seen = []
    with shared_lmdb(database).begin(write=False, buffers=False) as txn:
        for key in keys[:PROBED_VALUES]:
            value = txn.get(key) or b""
            try:
                Image.open(io.BytesIO(value)).close()
                return
            except Exception:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
                seen.append(f"{key.decode(errors='backslashreplace')}: {value[:16]!r}")
    raise DataNotFoundError(
        f"{database} is an lmdb database, but not one of images: the values of its first {len(seen)} key(s) are "
        f"not images Pillow can read ({'; '.join(seen[:3])}). LSUN's databases map image ids to "
        f"WebP/JPEG bytes.\n{layout(category)}"
    )


def list_split(split: LsunSplit, category: str) -> list[bytes] | list[str]:
    """The keys (lmdb) or relative paths (folder) of one split; ``DataNotFoundError`` if it holds none."""
    import lmdb

    try:
        entries = lmdb_keys(split.path) if split.kind == "lmdb" else list_folder_images(split.path)
        if not entries:
            raise DataNotFoundError(f"{split.path} holds no images.\n{layout(category)}")
        if split.kind == "lmdb":
            check_lmdb_values(split.path, entries, category)
    except lmdb.Error as err:
        raise DataNotFoundError(
            f"{split.path} cannot be read as an lmdb database ({type(err).__name__}: {err}).\n{layout(category)}"
        ) from err
    return entries


def split_source(split: LsunSplit, entries: list[bytes] | list[str]) -> ImageSource:
    """The images ``entries`` (from ``list_split``) of ``split``."""
    return LmdbSource(split.path, entries) if split.kind == "lmdb" else FolderSource(split.path, entries)


class LSUNDataModule(EncodedImageDataModule):
    """One LSUN category at ``resolution`` (module doc); unlabelled (labels 0), batches ``(3, R, R)``.

    Args:
        root: folder with ``<category>_train_lmdb/`` (module doc for the other layouts).
        category: LSUN category, e.g. ``church_outdoor``, ``bedroom``.
        resolution: side of the output images (256 for the LDM teachers).
        val_size: images held out for validation when there is no validation split.
        split_seed: seed of that hold-out.
        random_flip, on_corrupt, small_images, batch_size, num_workers, pin_memory,
            persistent_workers: as in ``EncodedImageDataModule``.
    """

    def __init__(
        self,
        root: str | None = None,
        category: str = "church_outdoor",
        resolution: int = 256,
        val_size: int = 300,
        split_seed: int = 0,
        random_flip: bool = True,
        on_corrupt: str = "skip",
        small_images: str = "upscale",
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
    ) -> None:
        super().__init__(
            root,
            resolution,
            random_flip,
            on_corrupt,
            small_images,
            batch_size,
            num_workers,
            pin_memory,
            persistent_workers,
        )
        if not isinstance(val_size, int) or val_size < 1:
            raise ValueError(f"data.val_size={val_size!r} must be a positive integer")
        self.category, self.val_size, self.split_seed = category, val_size, split_seed

    def prepare_data(self) -> None:
        # On one process per node: fail early if the data is missing, and write the key caches once.
        for split in locate_lsun(self.root, self.category):
            if split is not None:
                list_split(split, self.category)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        train_split, val_split = locate_lsun(self.root, self.category)
        train = list_split(train_split, self.category)
        log.info("LSUN %s: train from %s (%s)", self.category, train_split.path, train_split.kind)
        if val_split is not None:
            val = list_split(val_split, self.category)
            log.info("LSUN %s: validation from %s (%s)", self.category, val_split.path, val_split.kind)
        else:
            if self.val_size >= len(train):
                raise ValueError(
                    f"data.val_size={self.val_size} but {train_split.path} has only {len(train)} images; "
                    "lower data.val_size"
                )
            log.info("LSUN %s: no validation split; holding out %d training images", self.category, self.val_size)
            train_idx, val_idx = holdout_split(len(train), self.val_size, self.split_seed)
            train, val, val_split = take(train, train_idx), take(train, val_idx), train_split
        return (
            self.make_dataset(split_source(train_split, train), None, train=True),
            self.make_dataset(split_source(val_split, val), None, train=False),
        )
