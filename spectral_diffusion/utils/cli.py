"""What every command-line entry point shares (``train.py``, ``evaluate.py``, ``scripts/*.py``).

- A user error (``utils/errors.py``) ends the command with one message and exit status 2, and the
  message is also appended to the run's log file. ``HYDRA_FULL_ERROR=1`` keeps the traceback.
- ``dry_run=true`` writes nothing: Hydra is told before it starts not to create the run
  directory's ``.hydra/`` and log file (it would otherwise do so before the task runs).

Usage::

    @hydra.main(version_base="1.3", config_path="configs", config_name="train")
    @report_user_errors
    def main(cfg): ...

    if __name__ == "__main__":
        run(main)
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from spectral_diffusion.utils.errors import message_of, user_error

#: What Hydra is told for a dry run: no .hydra/, the log file's handler writing to /dev/null, and
#: the current directory as the job directory, which exists already (Hydra creates the job
#: directory before the task runs). The printed config still shows the real run directory.
DRY_RUN_OVERRIDES = (
    "hydra.output_subdir=null",
    f"hydra.job_logging.handlers.file.filename={os.devnull}",
    "hydra.run.dir=.",
)
TRUE_WORDS = ("true", "yes", "on", "1")


def full_error_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _append_to_log_files(message: str) -> None:
    """Write ``message`` to the root logger's file handlers only (the console gets it on stderr)."""
    record = logging.LogRecord("error", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def report_user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user error raised by ``main`` into one message on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Exception as err:
            inner = user_error(err)
            if inner is None or full_error_wanted():
                raise
            message = message_of(inner)
            _append_to_log_files(message)
            print(f"error: {message}\n(set HYDRA_FULL_ERROR=1 to see the traceback)", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped


def _override_value(argument: str) -> tuple[str, str] | None:
    """``(key, value)`` of a ``key=value`` command-line override (``+key``/``++key`` too), else ``None``."""
    if argument.startswith("-") or "=" not in argument:
        return None
    key, value = argument.split("=", 1)
    return key.lstrip("+~"), value.strip().strip("'\"")


def _overrides(argv: list[str]) -> dict[str, str]:
    """The ``key=value`` overrides of a command line, the last one of each key winning."""
    return dict(parsed for parsed in map(_override_value, argv) if parsed)


def is_dry_run(argv: list[str]) -> bool:
    """Whether ``argv`` asks for ``dry_run=true`` in a single run (not a ``-m`` sweep)."""
    if "-m" in argv or "--multirun" in argv:
        return False
    return _overrides(argv).get("dry_run", "").lower() in TRUE_WORDS


#: A dry run's job directory is ".", so the run directory it prints is spelled out: the default of
#: configs/paths/default.yaml, without the resolver that would read Hydra's directory.
DEFAULT_OUTPUT_DIR = "${paths.log_dir}/${task_name}/${run_name}"


def run(main: Callable[[], Any], argv: list[str] | None = None) -> Any:
    """Call a ``@hydra.main`` function, first telling Hydra to write nothing if this is a dry run."""
    argv = sys.argv if argv is None else argv
    if is_dry_run(argv[1:]):
        overrides = _overrides(argv[1:])
        if "paths.output_dir" not in overrides:
            argv.append(f"paths.output_dir='{overrides.get('hydra.run.dir', DEFAULT_OUTPUT_DIR)}'")
        argv.extend(DRY_RUN_OVERRIDES)
    return main()
