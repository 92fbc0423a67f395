"""A checkpoint save on a full disk (a real one: a small tmpfs) stops the run with an error that says so and how to
go on, keeps the earlier checkpoints, and a rerun after making room resumes. Real DeepSpeed ZeRO-3 on gloo, 2 ranks,
through tests/distributed/ckpt_train.py (a checkpoint of its tiny student takes ~1.6 MiB)."""

import json
import os
from pathlib import Path

import pytest

from ard_scale.checkpoint.manager import META, CheckpointManager
from ard_scale.checkpoint.safe_load import tag_problems
from ard_scale.config import load_config, to_dict
from ard_scale.utils.launch import torchrun

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ckpt_train.py")

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def train(tmp_path, run_dir, *args):
    errors = tmp_path / "errors"
    done = torchrun(2, SCRIPT, "--run-dir", str(run_dir), "--out", str(tmp_path / "losses.jsonl"),
                    "--save-errors", str(errors), *args)  # fmt: skip
    reports = {}
    for rank in (0, 1):
        path = Path(f"{errors}.rank{rank}")
        if path.exists():
            reports[rank] = json.loads(path.read_text())
            path.unlink()
    return done, reports


def listing(ckpt_dir):
    return {p.name: (p / META).is_file() for p in sorted(ckpt_dir.glob("step_*"))}


def test_a_save_that_will_not_fit_stops_before_writing_and_a_rerun_with_room_resumes(tmp_path, small_disk):
    run_dir = small_disk(2600) / "run"  # room for one checkpoint, not two
    ckpt = run_dir / "checkpoints"
    done, reports = train(tmp_path, run_dir, "--steps", "2", "--save-at", "1", "2")
    assert done.returncode != 0 and sorted(reports) == [0, 1], done.stdout[-3000:] + done.stderr[-3000:]
    assert reports[0] == reports[1] and reports[0]["every_rank"]  # one decision, one message for all ranks
    message = reports[0]["message"]
    assert message.startswith(f"no room to save checkpoint step_00000002: {ckpt} has ")
    assert "checkpoint step_00000001 takes 1.6 MiB. Nothing was written; step_00000001 stays the latest" in message
    assert message.endswith("then rerun the same command: it resumes from step_00000001")
    assert listing(ckpt) == {"step_00000001": True} and (ckpt / "latest").read_text() == "step_00000001"
    assert not tag_problems(ckpt / "step_00000001")

    small_disk(8192)  # room made
    done, reports = train(tmp_path, run_dir, "--steps", "2", "--save-at", "2", "--resume")
    assert done.returncode == 0 and not reports, done.stdout[-3000:] + done.stderr[-3000:]
    assert listing(ckpt) == {"step_00000001": True, "step_00000002": True}
    assert (ckpt / "latest").read_text() == "step_00000002"


def test_a_save_that_fills_the_disk_while_it_writes_names_the_likely_cause(tmp_path, small_disk):
    run_dir = small_disk(1000) / "run"  # less than one checkpoint: the first save fills the disk while it writes
    ckpt = run_dir / "checkpoints"
    done, reports = train(tmp_path, run_dir, "--steps", "1", "--save-at", "1")
    assert done.returncode != 0 and reports, done.stdout[-3000:] + done.stderr[-3000:]
    own = [r["message"] for r in reports.values() if not r["every_rank"]]
    # a rank whose own write failed says so; one left waiting for it, that another rank failed (test_checkpoint_peer)
    wrote = [m for m in own if f"could not write checkpoint step_00000001 in {ckpt} (" in m]
    waited = [m for m in own if f"could not finish checkpoint step_00000001 in {ckpt}: another rank failed" in m]
    assert wrote and len(wrote) + len(waited) == len(own), own
    assert all("0.0 MiB is free there: a full disk or quota shows as this error" in m for m in wrote), own
    assert all("step_00000001 is incomplete and is never loaded; there is no earlier checkpoint" in m for m in own)
    assert listing(ckpt) == {"step_00000001": False} and not (ckpt / "latest").exists()  # the next save removes it


def test_a_save_removes_what_failed_saves_left_and_nothing_else(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2, config_dict=to_dict(load_config(ROOT / "recipes/tiny_cpu.yaml")))
    made = {
        "step_00000002": True,  # latest
        "step_00000001": False,  # incomplete, older than latest: retention's, after this save succeeds
        "step_00000002_universal": False,
        "step_00000003": False,  # a save that failed
        "step_00000005": True,  # complete but newer than latest: its `latest` write failed
        "step_00000004": False,  # this save's own tag, from an earlier failed try
    }
    for name, complete in made.items():
        (manager.dir / name).mkdir(parents=True)
        (manager.dir / name / ("ard_checkpoint.json" if complete else "partial.pt")).write_text("{}")
    (manager.dir / "latest").write_text("step_00000002")
    manager._remove_failed_saves("step_00000004", manager.latest_tag())
    assert sorted(os.listdir(manager.dir)) == [
        "latest", "step_00000001", "step_00000002", "step_00000002_universal", "step_00000005",
    ]  # fmt: skip
