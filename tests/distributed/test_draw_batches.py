"""Ranks whose streams differ (an all-corrupt micro-batch on
one rank, finite data that ends earlier on one rank) still draw in lockstep, redraw together and stop together at
the same step, and the step's sample count is the sum of real samples. 2 ranks, gloo, no DeepSpeed."""

import json
from pathlib import Path

import pytest

from ard_scale.utils.launch import torchrun

pytestmark = [pytest.mark.distributed]


def test_ranks_redraw_together_and_stop_together_at_the_same_step(tmp_path):
    out = tmp_path / "out"
    r = torchrun(2, Path(__file__).with_name("draw_batches.py"), str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    got = [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in (0, 1)]
    # step 1: batches 0, 1 on both ranks (2+1 and 2+2 samples); then rank 1's batch 2 is empty, so both redraw:
    # rank 0's batch 2 (2 samples) is dropped; step 2: batches 3, 4. Rank 1 has no batch 5: both stop after step 2.
    assert [s["keys"] for s in got[0]["steps"]] == [
        [["r0b0s0", "r0b0s1"], ["r0b1s0"]],
        [["r0b3s0", "r0b3s1"], ["r0b4s0", "r0b4s1"]],
    ]
    assert [s["keys"] for s in got[1]["steps"]] == [
        [["r1b0s0", "r1b0s1"], ["r1b1s0", "r1b1s1"]],
        [["r1b3s0"], ["r1b4s0", "r1b4s1"]],
    ]
    assert [s["total"] for s in got[0]["steps"]] == [3 + 4, 4 + 3] == [s["total"] for s in got[1]["steps"]]
    assert got[0]["dropped"] == {"dropped: another rank's micro-batch had no valid sample": 2}
    assert got[1]["dropped"] == {}
    assert got[0]["left"] == 0 and got[1]["left"] == 0  # rank 0 drew its last batch in the draw that ended
