"""Writing an export folder so that a failed export leaves nothing half-written and overwrites nothing unasked.

The export is written into a temporary sibling folder and renamed into place when complete. An
existing, non-empty output folder is refused unless ``overwrite=true``; then it is moved aside,
the new folder renamed in, and only then the old one removed, so a crash in between leaves either
the old export or the new one, never a mix. ``overwrite=true`` replaces only a folder that an
export wrote (it holds :data:`EXPORT_RECORD`): a folder of anything else is never deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from spectral_diffusion.bundles.diffusers_folder import EXPORT_RECORD  # marks a folder as an export
from spectral_diffusion.utils.errors import UserError


class ExportError(UserError, ValueError):
    """An export that cannot be written as asked (the message names the path or key and what would work)."""


def check_output(output: str | Path | None, overwrite: bool) -> Path:
    """``output`` as a path an export may write, or an :class:`ExportError` saying why not."""
    if output is None or str(output) in ("", "???"):
        raise ExportError("output is not set: give output=DIR, the folder the export is written to")
    path = Path(output).expanduser()
    if path.exists() and not path.is_dir():
        raise ExportError(f"output={path} is a file; give a folder path (it is created)")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ExportError(
                f"output={path} exists and is not empty; choose a new folder, or pass overwrite=true to replace it"
            )
        if not (path / EXPORT_RECORD).is_file():
            raise ExportError(
                f"output={path} is not empty and was not written by an export (it has no {EXPORT_RECORD}); "
                "overwrite=true only replaces an earlier export. Choose a new folder."
            )
    return path


@contextlib.contextmanager
def staged_folder(output: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh temporary folder beside ``output``, renamed to ``output`` when the body completes."""
    output = check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    aside = None
    if output.exists():
        aside = output.parent / f".{output.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.replace(output, aside)
    os.replace(staging, output)
    if aside is not None:
        shutil.rmtree(aside)
