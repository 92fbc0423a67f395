"""train.precision reaches the teacher however it is held: a replicated one (zero.teacher_stage 0) computes in the
run's precision like the frozen ZeRO-3 engine (which casts it), rather than in fp32 (twice the memory the planner
counts, and other trajectories than the same recipe at teacher_stage 3)."""

import json
from pathlib import Path

import pytest

from ard_scale.utils.launch import torchrun

SCRIPT = Path(__file__).with_name("teacher_precision.py")


@pytest.mark.slow
@pytest.mark.distributed
def test_a_replicated_teacher_runs_in_the_recipe_precision(tmp_path):
    out = tmp_path / "out.json"
    proc = torchrun(1, SCRIPT, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result == {"stage0": "torch.bfloat16", "stage3": "torch.bfloat16", "finite": True}
