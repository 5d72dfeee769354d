"""The one base of every error a user can fix: its message says what is wrong and how to fix it,
and the ``rvq`` command prints it as one paragraph and exits 2 (no traceback). The library raises
these too; callers that want to tell them apart catch the subclasses (RecipeError, DataError,
CheckpointError, ...)."""

from __future__ import annotations

__all__ = ["RvqError"]


class RvqError(Exception):
    """A problem with the user's input, files or environment that the message explains."""
