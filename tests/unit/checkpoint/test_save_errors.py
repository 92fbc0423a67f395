"""A checkpoint save into a folder that is not writable (here a real read-only mount, as a disk error leaves one)
stops with an error saying so and what to do, on a real one-process DeepSpeed engine; the earlier checkpoint stays the
latest, intact. DeepSpeed reports the tag folder it could not create as "Parent directory ... does not exist", and the
error used to add "a full disk or quota shows as this error" and advise making room, which cannot help. A full disk is
tests/distributed/test_checkpoint_room.py."""

import json
from pathlib import Path

from one_process import run_child

from ard_scale.checkpoint.safe_load import tag_problems

CHILD = """
import json, sys
import torch
from ard_scale.checkpoint.manager import CheckpointManager, CheckpointSaveError
from ard_scale.config import load_config, to_dict
from ard_scale.distributed.engines import build_student_engine, init_distributed, student_ds_config

torch.set_num_threads(1)
init_distributed()
run_dir, step, recipe = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
engine, _ = build_student_engine(torch.nn.Linear(8, 1), student_ds_config(micro_batch=2, zero_stage=3))
mgr = CheckpointManager(run_dir, keep_last=2, config_dict=to_dict(load_config(recipe)))
if mgr.load_latest(engine) is not None:
    print("resumed", mgr.loaded_tag, flush=True)
engine.backward(engine(torch.randn(2, 8)).pow(2).mean())
engine.step()
try:
    mgr.save(engine, step, {"step": step}, {"cursor": torch.tensor(step)})
    result = {"saved": mgr.latest_tag()}
except CheckpointSaveError as e:
    result = {"error": str(e), "every_rank": e.every_rank}
print("RESULT " + json.dumps(result), flush=True)
"""

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "tiny_cpu.yaml"


def test_a_save_into_a_read_only_folder_says_so_and_keeps_the_latest(small_disk):
    run_dir = small_disk(8192) / "run"
    ckpt = run_dir / "checkpoints"
    assert run_child(CHILD, str(run_dir), "1", str(RECIPE)) == {"saved": "step_00000001"}
    small_disk(8192, read_only=True)  # the filesystem goes read-only between two saves
    result = run_child(CHILD, str(run_dir), "2", str(RECIPE))
    message = result.get("error", json.dumps(result))
    assert f"rank 0 could not write checkpoint step_00000002 in {ckpt} (" in message, message
    assert "The folder is not writable (creating a file there: Read-only file system)" in message, message
    assert "step_00000002 is incomplete and is never loaded; step_00000001 stays the latest, intact" in message
    assert message.endswith(
        f"Make {ckpt} writable for the user this job runs as, then rerun the same command: it resumes from "
        "step_00000001"
    ), message
    assert "full disk" not in message and "Make room" not in message, message
    assert (ckpt / "latest").read_text() == "step_00000001" and not tag_problems(ckpt / "step_00000001")
