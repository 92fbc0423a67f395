"""Helpers of the end-to-end tests that train a debug recipe on 2 ranks (imported by basename: the test folders have
no __init__.py)."""

import json
from pathlib import Path

from ard_scale.utils.launch import torchrun

# replay: steps 1-4 train on the trajectories solved at step 1, so the loss of one fixed batch is followed (it must
# fall), and a resume at step 2 restores the replay cache with the family's conditions
REPLAY = ("train.trajectory_source=replay", "train.replay_times=4")


def train(recipe: str, run_dir: Path, *overrides: str):
    """`launchers/train.py RECIPE` on 2 ranks (torchrun), writing to `run_dir`."""
    return torchrun(2, "launchers/train.py", recipe, f"checkpoint.run_dir={run_dir}", *overrides)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def straight_and_resumed(recipe: str, tmp: Path, *overrides: str) -> dict[str, Path]:
    """Two replay runs of 4 steps: `full` straight through, `split` stopped after step 2 and resumed."""
    full, split = tmp / "full", tmp / "split"
    steps = [(full, "train.max_steps=4"), (split, "train.max_steps=2"), (split, "train.max_steps=4")]
    for run_dir, max_steps in steps:
        proc = train(recipe, run_dir, *REPLAY, *overrides, max_steps)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return {"tmp": tmp, "full": full, "split": split}
