"""Helpers of the end-to-end tests that train a debug recipe on 2 ranks (imported by basename: the test folders have
no __init__.py)."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from ard_scale.utils.launch import torchrun

# replay: steps 1-4 train on the trajectories solved at step 1, so the loss of one fixed batch is followed (it must
# fall), and a resume at step 2 restores the replay cache with the family's conditions
REPLAY = ("train.trajectory_source=replay", "train.replay_times=4")
# the session's shared tiny_cpu run (tests/e2e/conftest.py): 6 steps, saved after steps 3 and 6
TINY_RUN = ("train.max_steps=6", "checkpoint.every=3")


def train(recipe: str, run_dir: Path, *overrides: str):
    """`launchers/train.py RECIPE` on 2 ranks (torchrun), writing to `run_dir`."""
    return torchrun(2, "launchers/train.py", recipe, f"checkpoint.run_dir={run_dir}", *overrides)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def resume_copy(source: Path, step: int, dest: Path) -> Path:
    """A run directory at `dest` holding `source`'s checkpoint of `step` as its latest and the metrics up to it: what
    a run of the same recipe stopped after `step` holds (the same save), without a second launch to make it."""
    tag = f"step_{step:08d}"
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / tag, dest / "checkpoints" / tag)
    (dest / "checkpoints" / "latest").write_text(tag)
    lines = (source / "metrics.jsonl").read_text().splitlines(keepends=True)
    (dest / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["step"] <= step))
    return dest


def straight_and_resumed(recipe: str, tmp: Path, *overrides: str) -> dict[str, Path]:
    """Two replay runs of 4 steps: `full` straight through (saving at steps 2 and 4), and `split` resumed at step 2
    from a copy of full's step-2 checkpoint, which must then repeat full's steps 3 and 4 bit for bit."""
    full = tmp / "full"
    saves = ("checkpoint.every=2", "checkpoint.keep_last=2")
    proc = train(recipe, full, *REPLAY, *overrides, *saves, "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-4000:]
    split = resume_copy(full, 2, tmp / "split")
    proc = train(recipe, split, *REPLAY, *overrides, *saves, "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from step 2 " in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    return {"tmp": tmp, "full": full, "split": split}


def shared_run(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A run directory built once per pytest session, also across pytest-xdist workers (which run other test files
    at the same time): the first worker to ask calls `build(folder)` under a file lock in the workers' common
    temporary folder, and the others wait for it and read the same folder. A failed build leaves no folder marked
    complete, so the next test to ask builds it again (and reports its own failure)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-N/popen-gwK -> .../pytest-N, shared by this session's workers
    folder, complete = root / name, root / f"{name}.complete"
    with FileLock(str(root / f"{name}.lock")):
        if not complete.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            complete.touch()
    return folder
