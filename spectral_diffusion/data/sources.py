"""Where encoded images come from: a folder tree, a zip file, or an lmdb database.

A source is an indexed list of encoded images (``read(i) -> bytes``) with a printable name per
entry (``name(i)``) for error messages. Sources are built once in the main process and handed to
DataLoader workers:

- Names and keys are held in numpy byte-string arrays, not Python lists: reading a list entry in a
  forked worker touches its reference count and copies the page, so a list of a million names
  slowly turns into a private copy in every worker.
- Zip files and lmdb environments are opened lazily, once per process, and never pickled. A
  ``ZipFile`` shares its file offset with every forked copy, so two workers reading through the
  parent's handle would read each other's bytes; an lmdb environment must not be used across a
  fork at all.
"""

from __future__ import annotations

import abc
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

# Pillow registers these formats but cannot decode them without extra software (Ghostscript,
# format handlers) or only identifies them; listing them as images would only produce errors.
_UNDECODABLE_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG", "IPTC", "FITS"})
# Folders that archivers and operating systems add next to the data.
_IGNORED_DIRS = frozenset({"__MACOSX"})


class SourceReadError(OSError):
    """An entry of a source could not be read (the message names the file or key)."""


def image_extensions() -> frozenset[str]:
    """Lower-case file suffixes of every format Pillow can open and decode here."""
    Image.init()
    return frozenset(
        ext
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in _UNDECODABLE_FORMATS
    )


def _is_listed(relpath: PurePosixPath, extensions: frozenset[str]) -> bool:
    hidden = any(part.startswith(".") or part in _IGNORED_DIRS for part in relpath.parts)
    return not hidden and relpath.suffix.lower() in extensions


def list_folder_images(root: str | Path) -> list[str]:
    """Relative POSIX paths of the images under ``root`` (recursive, sorted, hidden files skipped).

    Symbolic links to folders are followed (data sets are often assembled from links), each real
    folder once, so a link cycle cannot loop.
    """
    root = Path(root)
    extensions = image_extensions()
    seen: set[str] = set()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _IGNORED_DIRS]
        base = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        for filename in filenames:
            relpath = base / filename
            if _is_listed(relpath, extensions):
                found.append(str(relpath))
    return sorted(found)


def list_zip_images(path: str | Path) -> list[str]:
    """Member names of the images in the zip file ``path`` (recursive, sorted, hidden files skipped)."""
    extensions = image_extensions()
    with zipfile.ZipFile(path) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
    return sorted(name for name in names if _is_listed(PurePosixPath(name), extensions))


def _as_byte_array(items: Sequence[bytes]) -> np.ndarray:
    """Fixed-width byte strings: one flat buffer, shared copy-on-write with forked workers.

    numpy strips trailing NUL bytes from such strings, so items that end in one stay Python objects.
    """
    items = list(items)
    if not items:
        return np.array([], dtype="S1")
    if any(item.endswith(b"\0") for item in items):
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array
    return np.array(items, dtype=bytes)


class ImageSource(abc.ABC):
    """An indexed list of encoded images (see module doc)."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def name(self, index: int) -> str:
        """Where entry ``index`` lives, for messages (a path, ``archive.zip:member`` or ``db[key]``)."""

    @abc.abstractmethod
    def read(self, index: int) -> bytes:
        """The encoded bytes of entry ``index``; ``SourceReadError`` naming it if they cannot be read."""


class FolderSource(ImageSource):
    """Image files below ``root``, given by their paths relative to it."""

    def __init__(self, root: str | Path, relpaths: Sequence[str]) -> None:
        self.root = Path(root)
        self._relpaths = _as_byte_array([p.encode() for p in relpaths])

    def __len__(self) -> int:
        return len(self._relpaths)

    def relpath(self, index: int) -> str:
        return self._relpaths[index].decode()

    def name(self, index: int) -> str:
        return str(self.root / self.relpath(index))

    def read(self, index: int) -> bytes:
        try:
            return (self.root / self.relpath(index)).read_bytes()
        except OSError as err:
            raise SourceReadError(f"cannot read {self.name(index)}: {err}") from err


class ZipSource(ImageSource):
    """Members of a zip file, read through a handle opened once per process."""

    def __init__(self, path: str | Path, members: Sequence[str]) -> None:
        self.path = Path(path)
        self._members = _as_byte_array([m.encode() for m in members])
        self._archive: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self._members)

    def relpath(self, index: int) -> str:
        return self._members[index].decode()

    def name(self, index: int) -> str:
        return f"{self.path}:{self.relpath(index)}"

    def _handle(self) -> zipfile.ZipFile:
        if self._archive is None or self._pid != os.getpid():
            self._archive = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._archive

    def read(self, index: int) -> bytes:
        try:
            return self._handle().read(self.relpath(index))
        except (OSError, KeyError, zipfile.BadZipFile, EOFError) as err:
            raise SourceReadError(f"cannot read {self.name(index)}: {err}") from err

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_archive": None, "_pid": None}


def open_lmdb(path: str | Path) -> Any:
    """A read-only lmdb environment for data loading.

    No lock file (the database is never written while we read; a lock file also fails on
    read-only media), no read-ahead (random access: read-ahead would fill the page cache with
    neighbours we do not want), no zeroing of buffers (``meminit``: only matters for writers).
    """
    import lmdb

    return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1)


# py-lmdb allows one open environment per database and process ("already open in this
# process"), and several sources (train and held-out validation, two DataModules) may read the
# same database: they share one environment per process, keyed by the database's real path.
_OPEN_LMDB: dict[str, tuple[int, Any]] = {}  # real path -> (process that opened it, environment)


def shared_lmdb(path: str | Path) -> Any:
    """This process's read-only environment of the database at ``path``, opened on first use.

    A DataLoader worker forked after the parent opened the database inherits the parent's
    environment, which lmdb forbids it to use and which makes py-lmdb refuse to open the database
    again. The worker closes its inherited copy (its own mapping and file handles; the parent's
    stay open, and there are no locks to release with ``lock=False``) and opens its own.
    """
    real = os.path.realpath(path)
    pid = os.getpid()
    entry = _OPEN_LMDB.get(real)
    if entry is not None and entry[0] == pid:
        return entry[1]
    if entry is not None:
        entry[1].close()
    env = open_lmdb(path)
    _OPEN_LMDB[real] = (pid, env)
    return env


class LmdbSource(ImageSource):
    """Values of an lmdb database, looked up by key in this process's environment (``shared_lmdb``)."""

    def __init__(self, path: str | Path, keys: Sequence[bytes]) -> None:
        self.path = Path(path)
        self._keys = _as_byte_array(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, index: int) -> bytes:
        return bytes(self._keys[index])

    def name(self, index: int) -> str:
        return f"{self.path}[{self.key(index).decode(errors='backslashreplace')}]"

    def read(self, index: int) -> bytes:
        import lmdb

        try:
            with shared_lmdb(self.path).begin(write=False, buffers=False) as txn:
                value = txn.get(self.key(index))
        except lmdb.Error as err:
            raise SourceReadError(f"cannot read {self.name(index)}: {err}") from err
        if value is None:
            raise SourceReadError(f"{self.name(index)}: the key is not in the database")
        return value


def is_zip_root(root: Path) -> bool:
    """Whether ``root`` names a zip file (as opposed to a folder) of images."""
    return root.is_file() and root.suffix.lower() == ".zip"


def list_tree_images(root: Path) -> list[str]:
    """Relative paths of the images in a folder tree or a zip file holding the same tree."""
    if is_zip_root(root):
        try:
            return list_zip_images(root)
        except zipfile.BadZipFile as err:
            raise SourceReadError(f"{root} is not a readable zip file: {err}") from err
    return list_folder_images(root)


def tree_source(root: Path, relpaths: Sequence[str]) -> ImageSource:
    """The source of ``relpaths`` in a folder tree or a zip file (see ``list_tree_images``)."""
    return ZipSource(root, relpaths) if is_zip_root(root) else FolderSource(root, relpaths)
