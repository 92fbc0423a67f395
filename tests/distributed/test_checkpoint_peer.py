"""A rank that dies during a checkpoint save (SIGKILL: the OOM killer, a lost node) ends the collectives of the ranks
waiting for it. Those ranks used to report it as their own failure: inside DeepSpeed's save_checkpoint (which ends in
a barrier) as "rank 0 could not write checkpoint ... a full disk or quota shows as this error", and in the manager's
own barriers as a raw gloo traceback. Each now says what it knows: another rank failed or died, look at that rank's
error, and whether the checkpoint is the latest or never loaded.

Two plain processes on a real gloo group (no launcher, whose SIGTERM would end the survivor; the trainer ignores it),
with a stand-in engine that writes a file per rank and ends in a barrier as DeepSpeed's save_checkpoint does: seconds,
not a DeepSpeed launch."""

import json
import subprocess
import sys

import pytest

from ard_scale.utils.launch import ROOT, free_port, launch_env

pytestmark = pytest.mark.distributed

RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"

CHILD = """
import json, os, signal, sys
import torch
import torch.distributed as dist
from ard_scale.checkpoint import manager as manager_module
from ard_scale.checkpoint.manager import CheckpointManager, CheckpointSaveError
from ard_scale.config import load_config, to_dict

run_dir, recipe, dies = sys.argv[1], sys.argv[2], sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()
armed = False  # rank 1 dies in the save of step 2, not in that of step 1


def die(where):
    if armed and rank == 1 and dies == where:
        os.kill(os.getpid(), signal.SIGKILL)


class Engine:
    \"\"\"What the manager uses of a DeepSpeed engine; save_checkpoint ends in a barrier, as DeepSpeed's does.\"\"\"

    optimizer = object()
    module = torch.nn.Linear(2, 2)

    def zero_optimization_stage(self):
        return 3

    def save_checkpoint(self, save_dir, tag, client_state, save_latest, exclude_frozen_parameters):
        os.makedirs(f"{save_dir}/{tag}", exist_ok=True)
        die("engine")
        torch.save(dict(client_state), f"{save_dir}/{tag}/zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
        dist.barrier()


barriers = 0
real_barrier = manager_module._barrier


def barrier():  # the manager's: after every rank's files, and after rank 0 published `latest`
    global barriers
    barriers += 1
    die(f"barrier{barriers}")
    real_barrier()


manager_module._barrier = barrier
mgr = CheckpointManager(run_dir, keep_last=2, config_dict=to_dict(load_config(recipe)))
mgr.save(Engine(), 1, {"step": 1}, {})
barriers, armed = 0, True
try:
    mgr.save(Engine(), 2, {"step": 2}, {})
    result = {"saved": mgr.latest_tag()}
except CheckpointSaveError as e:
    result = {"error": str(e), "every_rank": e.every_rank}
print("RESULT " + json.dumps(result), flush=True)
os._exit(0)  # the group's peer is gone: no teardown
"""


@pytest.mark.parametrize(
    "dies, latest",
    [("engine", "step_00000001"), ("barrier2", "step_00000002")],
    ids=["in-deepspeeds-save", "after-publishing"],
)
def test_the_ranks_a_dead_rank_leaves_waiting_say_so_not_that_their_disk_is_full(tmp_path, dies, latest):
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(RECIPE), dies],
            cwd=ROOT,
            env=launch_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    (out, err), _ = procs[0].communicate(timeout=120), procs[1].communicate(timeout=120)
    assert procs[1].returncode == -9, "rank 1 was meant to die inside the save of step 2"
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, err[-3000:]
    result = json.loads(line.removeprefix("RESULT "))
    message = result.get("error", json.dumps(result))
    ckpt = tmp_path / "checkpoints"
    assert message.startswith(
        f"rank 0 could not finish checkpoint step_00000002 in {ckpt}: another rank failed or died during the save "
        "(this rank's wait for it ended in "
    ), message
    assert "that rank's own error (its lines of the log) says why" in message, message
    assert "full disk" not in message and "could not write" not in message and "\n" not in message, message
    assert not result["every_rank"]  # this rank's own account, beside the failed rank's
    if latest == "step_00000001":
        assert "step_00000002 is incomplete and is never loaded; step_00000001 stays the latest, intact" in message
        assert message.endswith("then rerun the same command: it resumes from step_00000001"), message
    else:
        assert "step_00000002 was saved whole and is the latest" in message, message
        assert message.endswith("then rerun the same command: it resumes from step_00000002"), message
    assert (ckpt / "latest").read_text() == latest
