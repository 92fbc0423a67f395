"""bench/train_step.py at debug size on CPU, so the GPU benchmark cannot rot between sessions with a GPU: the step part
runs the trainer's DeepSpeed engines (ZeRO-3, bf16, one gloo process) and the student part times flex and sdpa, and
their figures hold together. No assertion on a timing ratio (this machine is shared and noisy)."""

import json
import math
import subprocess
import sys

import pytest

from ard_scale.utils.launch import ROOT, launch_env


@pytest.mark.slow
def test_the_debug_run_takes_a_deepspeed_step_and_its_figures_hold_together(tmp_path):
    out = tmp_path / "train_step.json"
    argv = [sys.executable, "bench/train_step.py", "--debug", "--parts", "step,student", "--models", "dit_xl_2_256"]
    argv += ["--rounds", "2", "--warmup", "0", "--step-rounds", "2", "--step-warmup", "0", "--json", str(out)]
    proc = subprocess.run(argv, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failed_parts"] == []
    step = result["step"]
    assert step["engine"].startswith("deepspeed ZeRO-3 bf16")
    assert len(step["losses"]) == 2 and all(math.isfinite(v) and v > 0 for v in step["losses"])
    assert step["step_s"] == pytest.approx(sum(step["median_s"].values()))
    assert sum(step["split"].values()) == pytest.approx(1.0)
    assert step["teacher_steps"] == 4 and step["history_attention"] == "sdpa"  # no flex backward on CPU
    f = step["flops"]  # per step: teacher forwards ×2 (CFG) per solver step, student ≈ 3 forwards
    per_sample = 2 * step["teacher_steps"] * f["teacher_forward_gflops"] + 3 * f["student_forward_gflops"]
    assert f["step_gflops"] == pytest.approx(step["batch"] * per_sample)
    student = result["student_dit_xl_2_256"]
    assert student["measured"] == "forward"
    assert student["ard_over_baseline_flex"] > 0 and student["ard_over_baseline_sdpa"] > 0
