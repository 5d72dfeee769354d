"""The one base of every error a user can fix: its message says what is wrong and how to fix it,
and the ``rvq`` command prints it as one paragraph and exits 2 (no traceback). The library raises
these too; callers that want to tell them apart catch the subclasses (RecipeError, DataError,
CheckpointError, ...)."""

from __future__ import annotations

import re

__all__ = ["RvqError", "UserError", "describe", "name_options_as_flags", "option"]


class RvqError(Exception):
    """A problem with the user's input, files or environment that the message explains."""


class UserError(RvqError):
    """Bad input from the user: printed as one paragraph, exit status 2, no traceback."""


_AS_FLAGS = False  # set while the rvq command runs: messages name options as its flags


def option(name: str, flag: str | None = None) -> str:
    """How a message names the parameter ``name`` of a library function: as itself
    (``batch_size``) when the library is called from Python, as the command's flag
    (``--batch-size``) while the ``rvq`` command runs (see :func:`name_options_as_flags`).
    ``flag`` gives the flag where it is not ``name`` with dashes (``option("fvd=False",
    flag="--no-fvd")``)."""
    if not _AS_FLAGS:
        return name
    return flag if flag is not None else "--" + name.replace("_", "-")


def name_options_as_flags(on: bool = True) -> None:
    """Make :func:`option` name parameters as command-line flags (the CLI turns this on for the
    length of a command and off again when it ends)."""
    global _AS_FLAGS
    _AS_FLAGS = on


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def describe(exn: BaseException) -> str:
    """``exn`` for a user message: its type and text on one line, with Python object reprs
    (``<_io.BytesIO object at 0x…>``, which PIL puts in its messages) said in words."""
    text = _OBJECT_REPR.sub("the data", str(exn)).replace("\n", " ").strip()
    return f"{type(exn).__name__}: {text}" if text else type(exn).__name__
