"""Folders a tool writes whole or not at all: exports, shard sets, precomputed text.

`writing_folder` hands the block a hidden sibling of the destination (`.NAME.partial-…`) and renames it to the
destination only when the block ends without an error, so a reader never meets a half-written folder, a failure
leaves nothing behind (a kill only the hidden folder), and a rerun starts clean. A destination that holds files is
refused (`check_new_folder`, also called before the slow part of a job) unless `replace`."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def check_new_folder(out_dir: str | Path, what: str) -> None:
    """Refuse `out_dir` unless it is new or empty; `what` names what it was to hold."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not empty; choose a new folder for the {what} (or remove it)")


@contextlib.contextmanager
def writing_folder(out_dir: str | Path, *, what: str, replace: bool = False) -> Iterator[Path]:
    """Write folder `out_dir` whole or not at all (see the module docstring); `replace`: swap an existing folder for
    the new one once the new one is finished (the evaluator's and the demo's own folders)."""
    out_dir = Path(out_dir)
    if not replace:
        check_new_folder(out_dir, what)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(3)}")
    work.mkdir()
    try:
        yield work
        if replace and out_dir.exists():
            old = work.with_name(work.name.replace(".partial-", ".old-"))
            out_dir.rename(old)
            try:
                work.rename(out_dir)
            except BaseException:
                old.rename(out_dir)
                raise
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        else:
            work.rename(out_dir)  # over an empty folder: POSIX rename replaces it
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
