"""Why a checkpoint save could not happen, said so the user can act: no room before it starts (`room_problem`), or a
write that failed (`write_failure`: a folder that is not writable is told apart from a full disk). The manager
(checkpoint/manager.py) raises these messages as `CheckpointSaveError`."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

from ard_scale.errors import UserError
from ard_scale.utils.folders import size_text

_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class CheckpointSaveError(UserError, RuntimeError):
    """A checkpoint could not be saved; the run stops with its earlier checkpoints intact. `every_rank`: every rank
    raises the same one (one of them need say it), else only the rank that failed."""


def _make_room(latest: str | None) -> str:
    then = f"it resumes from {latest}" if latest else "it starts over"
    return (
        "Make room there (checkpoint.keep_last keeps fewer checkpoints; delete other files) or give "
        f"checkpoint.run_dir a disk with room, then rerun the same command: {then}"
    )


def _write_probe(folder: Path) -> OSError | None:
    """The error creating a file in `folder` gives, or None when it can."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        return e


def room_problem(ckpt_dir: Path, tag: str, latest: str | None) -> str | None:
    """Why `tag` will not fit in `ckpt_dir` beside the checkpoints kept: it takes about what `latest` takes (same
    model, same optimizer); None when it fits or there is nothing to measure yet."""
    if latest is None or not (ckpt_dir / latest).is_dir():
        return None
    need = sum(p.stat().st_size for p in (ckpt_dir / latest).iterdir() if p.is_file())
    free = shutil.disk_usage(ckpt_dir).free
    if free >= need:
        return None
    return (
        f"no room to save checkpoint {tag}: {ckpt_dir} has {size_text(free)} free and checkpoint {latest} takes "
        f"{size_text(need)}. Nothing was written; {latest} stays the latest. {_make_room(latest)}"
    )


def write_failure(ckpt_dir: Path, tag: str, latest: str | None, rank: int, error: Exception) -> str:
    """The message for `rank`'s failed write of checkpoint `tag` in `ckpt_dir`."""
    kept = f"{latest} stays the latest, intact" if latest else "there is no earlier checkpoint"
    failed = f"rank {rank} could not write checkpoint {tag} in {ckpt_dir} ({type(error).__name__}: {error})."
    outcome = f"{tag} is incomplete and is never loaded; {kept}."
    # DeepSpeed reports a folder it could not create as "Parent directory ... does not exist": ask the folder
    probe = _write_probe(ckpt_dir)
    if probe is not None and probe.errno in _NOT_WRITABLE:  # not a full disk: "make room" would not help
        then = f"it resumes from {latest}" if latest else "it starts over"
        return (
            f"{failed} The folder is not writable (creating a file there: {probe.strerror}): its permissions, or "
            f"a read-only mount (a disk error can remount a filesystem read-only). {outcome} Make {ckpt_dir} "
            f"writable for the user this job runs as, then rerun the same command: {then}"
        )
    free = shutil.disk_usage(ckpt_dir).free
    return (
        f"{failed} {size_text(free)} is free there: a full disk or quota shows as this error. {outcome} "
        f"{_make_room(latest)}"
    )
