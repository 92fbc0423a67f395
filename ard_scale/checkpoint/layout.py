"""Names and atomic writes of a run's checkpoint directory (the layout is in manager.py's docstring)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

LATEST = "latest"  # the file naming the newest complete tag
UNIVERSAL_SUFFIX = "_universal"  # step_N_universal/: step_N converted to load on any number of ranks
_TAG_RE = re.compile(r"^step_(\d{8,})$")


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int | None:
    m = _TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rank_{rank:05d}.pt"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old or the new content, never a partial file."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:  # e.g. a full disk: leave no partial temporary file behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
