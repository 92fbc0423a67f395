"""Why a checkpoint save could not happen, said so the user can act: no room before it starts (`room_problem`), rank 0's
preparation that failed (`prepare_failure`: creating the folder, removing what failed saves left), a write that
failed (`write_failure`: a folder that is not writable is told apart from a full disk), or another rank that failed
during the save (`peer_failure`, said by the ranks left waiting for it; `collective_failed` tells the two apart). The
manager (checkpoint/manager.py) raises these messages as `CheckpointSaveError`."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

import torch.distributed as dist

from ard_scale.errors import UserError
from ard_scale.utils.folders import size_text

_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class CheckpointSaveError(UserError, RuntimeError):
    """A checkpoint could not be saved; the run stops with its earlier checkpoints intact. `every_rank`: every rank
    raises the same one (one of them need say it), else only the rank that failed."""


def _make_room(latest: str | None) -> str:
    return (
        "Make room there (checkpoint.keep_last keeps fewer checkpoints; delete other files) or give "
        f"checkpoint.run_dir a disk with room, then rerun the same command: {_then(latest)}"
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
    failed = f"rank {rank} could not write checkpoint {tag} in {ckpt_dir} ({type(error).__name__}: {error})."
    outcome = f"{tag} is incomplete and is never loaded; {_kept(latest)}."
    # DeepSpeed reports a folder it could not create as "Parent directory ... does not exist": ask the folder
    return _not_writable(ckpt_dir, latest, failed, outcome) or _no_room(ckpt_dir, latest, failed, outcome)


def collective_failed(error: BaseException) -> bool:
    """Whether `error` came out of a collective with the other ranks (one of torch's distributed errors, or raised
    inside torch.distributed or DeepSpeed's comm layer: gloo's "Connection closed by peer" is a plain RuntimeError)
    rather than from this rank's own files: then `peer_failure` says it, else `write_failure`."""
    if isinstance(error, OSError):
        return False
    if isinstance(error, dist.DistError):
        return True
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename).as_posix() if tb is not None else ""
    return "/torch/distributed/" in where or "/deepspeed/comm/" in where


def peer_failure(ckpt_dir: Path, tag: str, latest: str | None, rank: int, error: Exception, published: bool) -> str:
    """The message for `rank` when a collective of the save of `tag` failed: another rank failed or died during the
    save, and that rank's own error says why. `published`: `latest` already names `tag` (a peer died after it)."""
    failed = (
        f"rank {rank} could not finish checkpoint {tag} in {ckpt_dir}: another rank failed or died during the save "
        f"(this rank's wait for it ended in {type(error).__name__}: {error}); that rank's own error (its lines of the "
        "log) says why."
    )
    if published:
        return (
            f"{failed} {tag} was saved whole and is the latest. Fix what that rank reports, then rerun the same "
            f"command: it resumes from {tag}"
        )
    return (
        f"{failed} {tag} is incomplete and is never loaded; {_kept(latest)}. Fix what that rank reports, then rerun "
        f"the same command: {_then(latest)}"
    )


def prepare_failure(ckpt_dir: Path, tag: str, latest: str | None, error: OSError) -> str:
    """The message for rank 0's failed preparation of checkpoint `tag` (creating `ckpt_dir`, removing what failed
    saves left, measuring the room): nothing of `tag` was written yet."""
    failed = f"rank 0 could not prepare checkpoint {tag} in {ckpt_dir} ({type(error).__name__}: {error})."
    outcome = f"Nothing of {tag} was written; {_kept(latest)}."
    not_writable = _not_writable(ckpt_dir, latest, failed, outcome)
    if not_writable:
        return not_writable
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return _no_room(ckpt_dir, latest, failed, outcome)
    return (
        f"{failed} {outcome} Fix what the error names (a failed save's leftover folder there can be removed by "
        f"hand), then rerun the same command: {_then(latest)}"
    )


def _kept(latest: str | None) -> str:
    return f"{latest} stays the latest, intact" if latest else "there is no earlier checkpoint"


def _then(latest: str | None) -> str:
    return f"it resumes from {latest}" if latest else "it starts over"


def _existing(folder: Path) -> Path:
    """`folder`, or its nearest ancestor that exists (a checkpoint folder whose creation failed)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _not_writable(ckpt_dir: Path, latest: str | None, failed: str, outcome: str) -> str | None:
    """The message when `ckpt_dir` (or, not there, the folder it would be made in) is not writable, else None: not
    a full disk, where "make room" would not help."""
    folder = _existing(ckpt_dir)
    probe = _write_probe(folder)
    if probe is None or probe.errno not in _NOT_WRITABLE:
        return None
    there = "there" if folder == ckpt_dir else f"in {folder}"
    return (
        f"{failed} The folder is not writable (creating a file {there}: {probe.strerror}): its permissions, or "
        f"a read-only mount (a disk error can remount a filesystem read-only). {outcome} Make {folder} "
        f"writable for the user this job runs as, then rerun the same command: {_then(latest)}"
    )


def _no_room(ckpt_dir: Path, latest: str | None, failed: str, outcome: str) -> str:
    free = shutil.disk_usage(_existing(ckpt_dir)).free
    return (
        f"{failed} {size_text(free)} is free there: a full disk or quota shows as this error. {outcome} "
        f"{_make_room(latest)}"
    )
