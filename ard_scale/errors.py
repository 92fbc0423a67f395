"""The one exception type a launcher prints as a single `error: ...` line instead of a traceback.

A `UserError` is a refusal a user can act on: its message names the cause and the fix (a recipe that does not fit the
checkpoint, a teacher of another family, a run that stopped on NaN losses). Anything else is a bug and keeps its
traceback. `every_rank`: every rank of a run finds it alike (a recipe check, a collective decision), so rank 0 alone
says it; otherwise each rank that raised it says it (a shard only that rank read).

It is a ValueError, as these refusals were before it existed, so code that catches ValueError still does. Plain
Python, importable from every layer."""

from __future__ import annotations


class UserError(ValueError):
    def __init__(self, message: str, *, every_rank: bool = False) -> None:
        super().__init__(message)
        self.every_rank = every_rank
