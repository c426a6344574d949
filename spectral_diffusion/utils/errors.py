"""Which errors are the user's to fix, and their one-line message.

An entry point (``utils/cli.py``) prints such an error as one message, without a traceback: the
message already names the file, key or value and what would be right. Everything else is a bug
or a crash of a library, and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows every traceback.
"""

from __future__ import annotations

from omegaconf.errors import OmegaConfBaseException


class UserError(Exception):
    """Mixed into the framework's error classes whose cause is the user's input (config, data, files).

    Most of them are also ``ValueError`` or ``FileNotFoundError``, which count as user errors
    anyway; the mixin marks the ``RuntimeError`` ones (a checkpoint that cannot be read, a teacher
    that does not load, running out of memory at a configured batch size).
    """


class ConfigError(UserError, ValueError):
    """The config asks for something inconsistent (the message names the keys)."""


#: Built-in exceptions that mean bad input. A ``ValueError`` raised by a validation in this
#: framework names the key; one raised by a library still carries its own message.
USER_ERROR_TYPES: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FloatingPointError,  # a non-finite training loss: the message says which settings to change
    OmegaConfBaseException,  # a missing mandatory value (???), an unknown key, a failed interpolation
)


def unwrap(err: BaseException) -> BaseException:
    """The error behind Hydra's ``InstantiationException`` wrappers (they add only the target name)."""
    from hydra.errors import InstantiationException

    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def user_error(err: BaseException) -> BaseException | None:
    """``err`` (unwrapped) if it is the user's to fix, else ``None``."""
    inner = unwrap(err)
    return inner if isinstance(inner, USER_ERROR_TYPES) else None


def message_of(err: BaseException) -> str:
    """The message of a user error, as one block of text.

    OmegaConf appends ``full_key:`` / ``object_type=`` lines; the key stays, the type goes.
    """
    text = str(err).strip() or type(err).__name__
    if isinstance(err, OmegaConfBaseException):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = " ".join(line for line in lines if not line.startswith(("object_type=", "reference_type=")))
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text
