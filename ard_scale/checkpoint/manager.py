"""Sharded save/resume on all ranks, atomic `latest`, retention (DESIGN.md §2 "Checkpoints").

Layout of a run directory:

    RUN_DIR/checkpoints/latest                 tag of the newest *complete* checkpoint (replaced atomically)
    RUN_DIR/checkpoints/step_00001000/         DeepSpeed's files (engine.save_checkpoint) plus
        rank_00000.pt … rank_0000{W-1}.pt      each rank's own `rank_state` (data position, RNG, EMA shard)
        config.yaml                            the resolved recipe the checkpoint was written under
        ard_checkpoint.json                    step, world size, config hash, student architecture, and the size
                                               and CRC-32 of every other file; written last, after every rank
                                               finished: its presence marks the tag complete
    RUN_DIR/checkpoints/step_00001000_universal/   (optional) `to_universal`: loads on any number of ranks

Two kinds of state: `client_state` is global and small (step, samples seen, scheduler-like counters) and goes into
DeepSpeed's own files; `rank_state` is per rank (data loader position, RNG states, EMA shard) and goes into
`rank_{r:05d}.pt`. The frozen teacher and T5 are never saved: `save` refuses an engine without an optimizer.

The trainer does not assemble those dicts itself: it registers each stateful piece once (`track(name, obj,
per_rank=...)`, anything with `state_dict`/`load_state_dict`), then `save_tracked(engine, step)` writes them all and
`resume(engine)` restores them all, so saving and loading cannot drift apart.

Loading checks the tag first (`safe_load.tag_problems`: sizes, checksums, readable marker and recipe, no planted
objects), split over the ranks and gathered, so every rank takes the same decision. A damaged `latest` makes the
resume fall back to the newest older intact checkpoint, with a warning naming what was skipped and why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import yaml

from ard_scale.checkpoint.layout import (
    LATEST,
    UNIVERSAL_SUFFIX,
    atomic_write_text,
    fsync_path,
    rank_file,
    step_of,
    tag_of,
)
from ard_scale.checkpoint.safe_load import (
    CONFIG,
    META,
    complete_tags,
    file_digest,
    read_meta,
    safe_load,
    tag_problems,
    verify_dir,
)
from ard_scale.checkpoint.save_errors import (
    CheckpointSaveError,
    collective_failed,
    peer_failure,
    prepare_failure,
    room_problem,
    write_failure,
)
from ard_scale.checkpoint.student_meta import check_student_kind, check_zero_stage, student_architecture
from ard_scale.config import (
    config_hash,
    dump_yaml,
    recipe_changes,
    schedule_moved,
    to_dict,
    training_dict,
    with_defaults,
)
from ard_scale.errors import UserError

_CLIENT_KEYS = ("ard_step", "ard_config_hash", "ard_world_size")  # added to client_state, removed on load


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _gather(obj: Any) -> list:
    """`obj` of every rank, in rank order, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _own_files(tag_dir: Path, rank: int) -> list[Path]:
    """The files of `tag_dir` this rank wrote (ZeRO names its shards *_rank_{r}_*; rank 0 writes the mp_rank_ ones),
    so it can flush and checksum them while they are still in its page cache."""
    own = re.compile(rf"(^|_)rank_{rank}_")
    mine = rank_file(tag_dir, rank).name
    return sorted(
        p
        for p in tag_dir.iterdir()
        if p.is_file() and (p.name == mine or own.search(p.name) or (rank == 0 and p.name.startswith("mp_rank_")))
    )


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


@dataclass(frozen=True)
class Tracked:
    obj: Stateful
    per_rank: bool  # this rank's own (rank file) rather than the same on every rank (DeepSpeed's client state)
    optional: bool  # a checkpoint without it leaves the object as built (a stage added under allow_recipe_change)


@dataclass(frozen=True)
class Resumed:
    """What `resume` loaded: the tag, and whether the per-rank pieces were restored too (False: a universal
    checkpoint on a new number of ranks, where only the global pieces and the engine carry over)."""

    tag: str
    same_world: bool
    absent: tuple[str, ...] = ()  # optional pieces the checkpoint holds no state for (left as they were built)


class CheckpointManager:
    """The one owner of persistence. Every rank constructs it with the same arguments and calls `save` and
    `load_latest` together (both are collective)."""

    def __init__(
        self, run_dir: str | Path, *, keep_last: int, config_dict: Any, allow_recipe_change: bool = False
    ) -> None:
        if keep_last < 1:
            raise UserError(f"keep_last must be >= 1 (checkpoint.keep_last), got {keep_last}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self.config = to_dict(config_dict)
        self.config_hash = config_hash(self.config)
        self.allow_recipe_change = allow_recipe_change
        self.tracked: dict[str, Tracked] = {}
        self.loaded_tag: str | None = None  # the tag load_latest resumed (after any fall-back)
        self._checked_tag: str | None = None  # the intact tag resume_ds_config chose, for the load_latest after it
        self._damaged: set[str] = set()  # complete tags a resume found damaged and skipped: retention keeps none
        self._warned_no_latest = False

    # -- reading the directory ---------------------------------------------------------------------------------------
    def latest_tag(self) -> str | None:
        """Tag of the newest complete checkpoint, or None for a fresh run. Without a `latest` file beside complete
        checkpoints (deleted by hand, lost in a copy, or a kill between a first save's marker and its `latest`), the
        newest complete one, with a warning: starting over would replace them one save at a time."""
        path = self.dir / LATEST
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
        tags = self.complete_tags()
        if not tags:
            return None
        if not self._warned_no_latest:
            self._warned_no_latest = True
            warnings.warn(
                f"{path} is missing, but {self.dir} holds complete checkpoints ({', '.join(tags)}): resuming from "
                f"{tags[-1]}. To start the run over instead, move {self.dir} away (or give another "
                "checkpoint.run_dir)",
                stacklevel=2,
            )
        return tags[-1]

    def meta(self, tag: str) -> dict | None:
        """The tag's `ard_checkpoint.json` (present only once every rank finished), or None. Unreadable: ValueError."""
        return read_meta(self.dir / tag) if (self.dir / tag / META).is_file() else None

    def complete_tags(self) -> list[str]:
        """Complete step tags, oldest first."""
        return complete_tags(self.dir)

    def resume_ds_config(self, ds_config: dict) -> dict:
        """`ds_config` plus `checkpoint.load_universal=true` when the checkpoint the resume will load was written by a
        different number of ranks and has a universal conversion (`to_universal`). Call before building the student
        engine. Collective: it checks `latest` and picks the older intact checkpoint `load_latest` falls back to when
        it is damaged (that one's number of ranks decides); `load_latest` then loads that tag without reading it
        again."""
        tag = self.latest_tag()
        if tag is None:
            return ds_config
        tag = self._checked_tag = self._intact_tag(tag)
        if self.meta(tag)["world_size"] == _rank_world()[1]:
            return ds_config
        if not (self.dir / (tag + UNIVERSAL_SUFFIX)).is_dir():
            return ds_config  # load_latest raises the error that says how to convert
        return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}

    # -- the registry of stateful pieces -----------------------------------------------------------------------------
    def track(self, name: str, obj: Stateful, *, per_rank: bool = False, optional: bool = False) -> None:
        """Save `obj.state_dict()` under `name` at every `save_tracked`, and load it back in `resume`. `per_rank`:
        the state is this rank's own (data position, RNG, EMA shard); otherwise it is the same on every rank."""
        if name in self.tracked or name in _CLIENT_KEYS:
            raise UserError(f"checkpoint state name {name!r} is taken; track each piece once under its own name")
        self.tracked[name] = Tracked(obj, per_rank, optional)

    def save_tracked(self, engine, step: int) -> None:
        """`save` with the state of every tracked piece. Collective."""
        client = {n: t.obj.state_dict() for n, t in self.tracked.items() if not t.per_rank}
        rank_state = {n: t.obj.state_dict() for n, t in self.tracked.items() if t.per_rank}
        self.save(engine, step, client, rank_state)

    def resume(self, engine) -> Resumed | None:
        """`load_latest`, then every tracked piece from what it returned; None for a fresh run. A checkpoint that
        lacks a required piece is refused before anything is loaded into the pieces. Collective."""
        loaded = self.load_latest(engine)
        if loaded is None:
            return None
        client, rank_state = loaded
        sources = {n: rank_state if t.per_rank else client for n, t in self.tracked.items()}
        missing = [n for n, src in sources.items() if src is not None and n not in src and not self.tracked[n].optional]
        if missing:
            raise UserError(
                f"checkpoint {self.dir / self.loaded_tag} holds no state for {', '.join(missing)} (it has "
                f"{', '.join(sorted(client))} and per rank {', '.join(sorted(rank_state or {}))}): it was written by "
                "another version of ard_scale or another kind of run. Resume it with the version that wrote it, or "
                "start a new run in another checkpoint.run_dir"
            )
        for name, src in sources.items():
            if src is not None and name in src:
                self.tracked[name].obj.load_state_dict(src[name])
        absent = tuple(n for n, src in sources.items() if src is not None and n not in src)
        return Resumed(self.loaded_tag, same_world=rank_state is not None, absent=absent)

    # -- saving ------------------------------------------------------------------------------------------------------
    def save(self, engine, step: int, client_state: dict, rank_state: dict) -> None:
        """Save a checkpoint of the student `engine` at `step`. Collective: every rank calls it.

        `client_state` (global, identical on every rank) is stored by DeepSpeed; `rank_state` (this rank's own) in
        `rank_{r:05d}.pt`. `latest` moves to the new tag only after every rank has written everything."""
        if getattr(engine, "optimizer", None) is None:
            raise UserError(
                "refusing to checkpoint an engine without an optimizer: only the student is saved (the frozen "
                "teacher and T5 are rebuilt from the recipe)"
            )
        clash = sorted(set(client_state) & set(_CLIENT_KEYS))
        if clash:
            raise UserError(f"client_state keys {clash} are reserved by the checkpoint manager; rename them")
        rank, world = _rank_world()
        tag = tag_of(step)
        tag_dir = self.dir / tag
        latest = self.latest_tag()
        if latest == tag:  # e.g. a stop signal right after the periodic save: nothing new to write
            return
        self._damaged.discard(tag)  # replaced by this save
        cannot = self._prepare(tag, latest) if rank == 0 else None
        with self._failing_as_save_error(tag, latest, rank):
            cannot = _gather(cannot)[0]  # the same decision everywhere: no rank is left waiting for the others
        if cannot is not None:
            raise CheckpointSaveError(cannot, every_rank=True)

        client = {**client_state, "ard_step": step, "ard_config_hash": self.config_hash, "ard_world_size": world}
        with self._failing_as_save_error(tag, latest, rank):  # the other ranks' collectives fail once this rank exits
            # Trainable state only: a LoRA student's frozen base (the teacher's weights) is rebuilt from the recipe.
            engine.save_checkpoint(
                str(self.dir), tag=tag, client_state=client, save_latest=False, exclude_frozen_parameters=True
            )
            self._write_rank_state(tag_dir, rank, rank_state)
            _barrier()  # every rank's files are on disk (each fsynced its own)
            digests = _gather({p.name: file_digest(p) for p in _own_files(tag_dir, rank)})  # in parallel over ranks

        if rank == 0:
            try:
                self._publish(engine, tag, step, world, digests)
            except OSError as e:  # a disk that filled up or went read-only just now: the same error as above
                with contextlib.suppress(OSError):  # a marker without `latest` is resumed when there is no `latest`
                    (tag_dir / META).unlink(missing_ok=True)
                raise CheckpointSaveError(write_failure(self.dir, tag, latest, rank, e), every_rank=False) from e
        with self._failing_as_save_error(tag, latest, rank):
            _barrier()  # when save returns on any rank, `latest` names this checkpoint
        if rank == 0:
            self._apply_retention()

    @contextlib.contextmanager
    def _failing_as_save_error(self, tag: str, latest: str | None, rank: int):
        """What fails inside, raised as the CheckpointSaveError that says what this rank knows: its own write failed
        (`write_failure`), or a collective with the other ranks did, as it does when another rank failed or died
        during the save (`peer_failure`: that rank's own error says why; this rank's writes were not the problem)."""
        try:
            yield
        except Exception as e:
            if not collective_failed(e):
                raise CheckpointSaveError(write_failure(self.dir, tag, latest, rank, e), every_rank=False) from e
            published = self._names_latest(tag)  # rank 0 wrote `latest` before a peer died in the last barrier
            raise CheckpointSaveError(peer_failure(self.dir, tag, latest, rank, e, published), every_rank=False) from e

    def _names_latest(self, tag: str) -> bool:
        try:
            return (self.dir / LATEST).read_text(encoding="utf-8").strip() == tag
        except OSError:
            return False

    def _prepare(self, tag: str, latest: str | None) -> str | None:
        """Rank 0, before any rank writes: the checkpoint folder made and what failed saves left removed. Why `tag`
        cannot be saved (no room, or an OSError on the way), else None."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._remove_failed_saves(tag, latest)
            return room_problem(self.dir, tag, latest)
        except OSError as e:  # said by every rank's CheckpointSaveError, not a traceback on rank 0 alone
            return prepare_failure(self.dir, tag, latest, e)

    def _publish(self, engine, tag: str, step: int, world: int, digests: list[dict]) -> None:
        """Rank 0, once every rank has written its files: the recipe, the completion marker (with every file's size
        and checksum), then `latest`."""
        tag_dir = self.dir / tag
        dump_yaml(self.config, tag_dir / CONFIG)
        fsync_path(tag_dir / CONFIG)
        files = {name: d for per_rank in digests for name, d in per_rank.items()}
        for p in sorted(tag_dir.iterdir()):  # anything no rank claimed (and the config just written)
            if p.is_file() and p.name not in files and p.name != META:
                files[p.name] = file_digest(p)
        meta = {
            "step": step,
            "world_size": world,
            "zero_stage": engine.zero_optimization_stage(),
            "config_hash": self.config_hash,
            "time": time.time(),
            "student": student_architecture(engine.module),
            "files": dict(sorted(files.items())),
        }
        atomic_write_text(tag_dir / META, json.dumps(meta, indent=1))
        atomic_write_text(self.dir / LATEST, tag)

    def _remove_failed_saves(self, tag: str, latest: str | None) -> None:
        """Remove what saves that failed left (tag folders without a marker newer than `latest`, `tag`'s own
        included) and whatever this save of `tag` replaces (its folder and its universal conversion): never mix their
        files with this save's, count their bytes against its room, nor leave a conversion of other weights."""
        newest = step_of(latest or "")
        newest = -1 if newest is None else newest  # no `latest` yet (or an unreadable one): every marker-less tag
        for p in self.dir.glob("step_*"):
            s = step_of(p.name)
            if p.is_dir() and s is not None and p.name == tag_of(s) and s > newest and not (p / META).exists():
                shutil.rmtree(p)
        if (self.dir / tag).exists():  # a complete tag newer than `latest` (its `latest` write failed)
            shutil.rmtree(self.dir / tag)
        for stale in (tag + UNIVERSAL_SUFFIX, tag + UNIVERSAL_SUFFIX + ".tmp"):
            # converted from the step-`tag` checkpoint this save replaces (a damaged one `latest` fell back from, or
            # one whose `latest` write failed): a resume on another number of ranks would load its old weights
            if (self.dir / stale).exists():
                shutil.rmtree(self.dir / stale)

    def _write_rank_state(self, tag_dir: Path, rank: int, rank_state: dict) -> None:
        path = rank_file(tag_dir, rank)
        with open(path, "wb") as f:
            torch.save(rank_state, f)
            f.flush()
            os.fsync(f.fileno())
        for p in _own_files(tag_dir, rank):  # DeepSpeed does not fsync: flush this rank's own shard files
            if p.name != path.name:
                fsync_path(p)

    def _apply_retention(self) -> None:
        """Keep the newest `keep_last` complete checkpoints up to `latest`; delete older ones, incomplete tag dirs
        older than `latest`, and universal conversions of deleted tags. A checkpoint this run's resume found damaged
        (and skipped) is not one of the kept: counting it would delete an intact one in its place. Damage nobody has
        read yet goes unnoticed: checking every kept checkpoint's bytes at every save would cost a full read."""
        latest = step_of(self.latest_tag() or "")
        if latest is None:
            return
        complete = [t for t in self.complete_tags() if step_of(t) <= latest and t not in self._damaged]
        keep = set(complete[-self.keep_last :])
        for p in self.dir.iterdir():
            base = p.name.removesuffix(UNIVERSAL_SUFFIX)
            s = step_of(base)
            if p.is_dir() and s is not None and s <= latest and base not in keep:
                shutil.rmtree(p, ignore_errors=True)

    # -- loading -----------------------------------------------------------------------------------------------------
    def check_recipe(self, tag: str) -> None:
        """Raise ValueError if `tag` was written under a recipe whose training-defining keys differ from ours."""
        path = self.dir / tag / CONFIG
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        moved = schedule_moved(saved, self.config)
        if moved:
            warnings.warn(moved, stacklevel=3)
        changes = recipe_changes(saved, self.config)
        if not changes:
            return
        old, new = training_dict(with_defaults(saved)), training_dict(self.config)
        listing = "; ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in changes)
        if self.allow_recipe_change:
            warnings.warn(f"resuming {tag} under a changed recipe ({listing})", stacklevel=3)
            return
        raise UserError(
            f"checkpoint {self.dir / tag} was written with a different recipe; differing keys: {listing}. "
            "Resume it anyway with the override checkpoint.allow_recipe_change=true, or start a new run in another "
            "checkpoint.run_dir",
            every_rank=True,
        )

    def tag_problems(self, tag: str) -> list[str]:
        """What is wrong with checkpoint `tag` ([] = intact), the same list on every rank. Collective: the files are
        split over the ranks (each byte read once) and the findings gathered."""
        rank, world = _rank_world()
        try:
            local = tag_problems(self.dir / tag, rank, world)
        except Exception as e:  # never skip the gather below: the other ranks would wait in it forever
            local = [f"{self.dir / tag}: could not be checked on rank {rank}: {type(e).__name__}: {e}"]
        return sorted({p for per_rank in _gather(local) for p in per_rank})

    def _intact_tag(self, tag: str) -> str:
        """`tag` if intact, else the newest older intact complete checkpoint, with a warning naming what was skipped
        and why; `latest` is moved to it so that the next save of a skipped step replaces the damaged folder. No
        intact one: ValueError listing every problem. Collective."""
        candidates = [tag] + [t for t in reversed(self.complete_tags()) if step_of(t) < (step_of(tag) or 0)]
        skipped = []
        for candidate in candidates:
            problems = self.tag_problems(candidate)
            if not problems:
                break
            skipped.append(f"{candidate} ({'; '.join(problems)})")
            self._damaged.add(candidate)
        else:
            raise UserError(
                f"no intact checkpoint to resume in {self.dir}: " + " | ".join(skipped) + ". Restore the damaged "
                f"files, or move {self.dir} away to start the run over",
                every_rank=True,  # tag_problems is gathered: every rank has the same list
            )
        if skipped:
            warnings.warn(
                f"resuming from {candidate} in {self.dir}: skipped damaged or incomplete checkpoint(s) "
                + " | ".join(skipped),
                stacklevel=3,
            )
            if _rank_world()[0] == 0:
                atomic_write_text(self.dir / LATEST, candidate)
            _barrier()  # every rank reads the new `latest` from here on (e.g. the universal EMA reassembly)
        return candidate

    def load_latest(self, engine) -> tuple[dict, dict | None] | None:
        """Resume the student `engine` from the newest complete, intact checkpoint. Collective: every rank calls it.

        Returns None for a fresh run, else (client_state, rank_state). rank_state is this rank's own; it is None
        when loading a universal checkpoint (the per-rank layout changed: rebuild data position and RNG from
        client_state, and the EMA with `ard_scale.checkpoint.export.full_ema_state_dict`). This is the automatic
        resume of a run from its own `latest`, so a damaged one falls back (with a warning) to an older one;
        loading a named checkpoint elsewhere (export, gan.init_from, to_universal) refuses a damaged one."""
        tag = self.latest_tag()
        if tag is None:
            return None
        checked, self._checked_tag = self._checked_tag, None  # checked once: a later load_latest checks again
        tag = self.loaded_tag = tag if tag == checked else self._intact_tag(tag)
        meta = self.meta(tag)
        # first: a LoRA checkpoint for a full student (or the reverse) is no recipe change allow_recipe_change can pass
        check_student_kind(meta.get("student"), engine.module, self.dir / tag)
        self.check_recipe(tag)
        rank, world = _rank_world()
        universal = bool(getattr(engine, "load_universal_checkpoint", lambda: False)())
        if universal:
            load_tag = tag + UNIVERSAL_SUFFIX
            if not (self.dir / load_tag).is_dir():
                raise UserError(
                    f"the engine loads universal checkpoints but {self.dir / load_tag} does not exist; convert with "
                    f"`python -m ard_scale.checkpoint.universal {self.run_dir}` first"
                )
            verify_dir(self.dir / load_tag, checksums=False)  # its marker is its source's: planted objects only
        else:
            load_tag = tag
            if meta["world_size"] != world:  # the trainer loads a conversion itself (`resume_ds_config`)
                raise UserError(
                    f"checkpoint {self.dir / tag} was written by {meta['world_size']} ranks and this run has {world}. "
                    f"To resume it on {world}, convert it once with `python -m ard_scale.checkpoint.universal "
                    f"{self.run_dir}`, then rerun the same command: it loads the converted checkpoint (in your own "
                    "loop: build the engine with CheckpointManager.resume_ds_config(ds_config))",
                    every_rank=True,
                )
            if not rank_file(self.dir / tag, rank).is_file():
                raise UserError(
                    f"checkpoint {self.dir / tag} has no {rank_file(self.dir / tag, rank).name} for rank {rank}: it "
                    "is damaged (restore the file, or remove the checkpoint to resume from an older one)"
                )
        check_zero_stage(meta.get("zero_stage"), engine.zero_optimization_stage(), self.dir / tag)
        load_path, client = engine.load_checkpoint(str(self.dir), tag=load_tag)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {self.dir / load_tag}")
        for key in _CLIENT_KEYS:
            client.pop(key, None)
        rank_state = None if universal else safe_load(rank_file(self.dir / tag, rank))
        return client, rank_state
