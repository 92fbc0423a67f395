"""Folders a tool writes whole or not at all: exports, shard sets, precomputed text.

`writing_folder` hands the block a hidden sibling of the destination (`.NAME.partial-HOST-PID-…`) and renames it to
the destination only when the block ends without an error, so a reader never meets a half-written folder, a failure
leaves nothing behind, and a rerun starts clean. A destination that holds files is refused (`check_new_folder`, also
called before the slow part of a job) unless `replace`.

A kill leaves the hidden folder (a pipeline export of a 12B student: tens of GB). The next write to the same
destination removes what a writer on this host left when its process has ended, and says so; one from another host
(a shared filesystem) or from a running process is named in a warning and kept. A kill in the instant between a
replace's two renames leaves the destination missing and its last good copy hidden (`.NAME.old-HOST-PID-…`): that
copy is moved back rather than removed.

A write that fills the disk is a ValueError saying so (the launchers print it as one `error:` line), whichever
library was writing: Python's OSError keeps the errno, but torch's and safetensors' writers do not. A writer that
knows how much it will write (`need_bytes`: an export knows its tensors) is refused before it starts when the disk has
less free (`check_room`), rather than after writing most of it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from ard_scale.errors import UserError

FULL_BYTES = 16 << 20  # less free than this (or 1 % of a small disk) where a write failed: the disk filled up
_HIDDEN = re.compile(r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{6}")


def check_new_folder(out_dir: str | Path, what: str) -> None:
    """Refuse `out_dir` unless it is new or empty; `what` names what it was to hold. Tidies leftovers first."""
    out_dir = Path(out_dir)
    clear_leftovers(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} exists and is not empty; choose a new folder for the {what} (or remove it)")


def _ended(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's running process
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clear_leftovers(out_dir: str | Path) -> list[Path]:
    """Tidy what interrupted writes of `out_dir` left beside it (see the module docstring); returns what is kept."""
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return []
    host, kept, notes = socket.gethostname(), [], []
    for entry in sorted(out_dir.parent.iterdir()):
        m = _HIDDEN.fullmatch(entry.name)
        if m is None or m["name"] != out_dir.name:
            continue
        if m["host"] != host or not _ended(int(m["pid"])):
            kept.append(entry)
        elif m["kind"] == "old" and not out_dir.exists():
            entry.rename(out_dir)
            notes.append(f"put back the last good copy a killed replace had moved to {entry.name}")
        else:
            _remove(entry)
            notes.append(f"removed {entry.name}, left by an interrupted write (process {m['pid']} ended)")
    if kept:
        names = ", ".join(e.name for e in kept)
        notes.append(
            f"{names} beside it belong to a write that may still run (another host, or a live process); remove them "
            "yourself once it has ended"
        )
    for note in notes:  # each names the folder: where it is raised would tell a user nothing more
        warnings.warn(f"{out_dir}: {note}", stacklevel=1)
    return kept


def size_text(n: int) -> str:
    """`n` bytes for a message: MiB up to a GiB, then GiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def tensor_bytes(tensors: Iterable) -> int:
    """What `tensors` (torch tensors) take written out: what an export of them needs on disk, headers aside."""
    return sum(t.numel() * t.element_size() for t in tensors)


class NoRoom(UserError):
    """A write refused before it started: its disk has less free than it takes."""


def check_room(out_dir: str | Path, need_bytes: int, what: str) -> None:
    """Refuse to write `need_bytes` (what `what` takes) into `out_dir` (it need not exist yet, and may lie inside a
    folder being written) when its disk has less free: NoRoom, before the caller writes it."""
    where = Path(out_dir).absolute()
    while (not where.exists() or _HIDDEN.fullmatch(where.name)) and where != where.parent:
        where = where.parent  # the folder a user named: not a writing_folder's hidden one
    free = shutil.disk_usage(where).free
    if free < need_bytes:
        raise NoRoom(
            f"no room for the {what} in {where}: it takes about {size_text(need_bytes)} and the disk has "
            f"{size_text(free)} free, so it was not written and nothing is left there. Make room there, or write it "
            "to a disk with room"
        )


@contextlib.contextmanager
def writing_folder(
    out_dir: str | Path, *, what: str, replace: bool = False, need_bytes: int | None = None
) -> Iterator[Path]:
    """Write folder `out_dir` whole or not at all (see the module docstring); `replace`: swap an existing folder for
    the new one once the new one is finished (the evaluator's and the demo's own folders); `need_bytes`: about what
    the block will write, refused up front when the disk has less free (`check_room`)."""
    out_dir = Path(out_dir)
    if replace:
        clear_leftovers(out_dir)
    else:
        check_new_folder(out_dir, what)
    if need_bytes is not None:  # a replace's old copy goes only after the new one is written: it does not count
        check_room(out_dir.parent, need_bytes, what)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    work = out_dir.with_name(f".{out_dir.name}.partial-{stamp}")
    work.mkdir()
    try:
        yield work
        if replace and out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{stamp}")
            out_dir.rename(old)
            try:
                work.rename(out_dir)
            except BaseException:
                old.rename(out_dir)
                raise
            _remove(old)
        else:
            work.rename(out_dir)  # over an empty folder: POSIX rename replaces it
    except BaseException as e:
        # measured before the partial folder goes; a NoRoom (a check inside the block) already says it all
        full = isinstance(e, Exception) and not isinstance(e, NoRoom) and _disk_full(work, e)
        shutil.rmtree(work, ignore_errors=True)
        if full:
            raise UserError(
                f"no room for the {what} in {out_dir.parent}: the disk filled up while it was written "
                f"({type(e).__name__}: {e}); nothing was kept. Make room there, or write it to a disk with room"
            ) from e
        raise


def _disk_full(folder: Path, error: Exception) -> bool:
    """Whether `error` is a full disk or quota: the errno where Python saw it, else (torch's and safetensors' writers
    say 'unexpected pos' or 'iostream error') the free space left where it was writing."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return False
    return usage.free < min(FULL_BYTES, usage.total // 100)
