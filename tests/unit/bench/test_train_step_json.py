"""bench/train_step.py keeps what it measured when it is stopped part-way: gpu_check.sh runs it under `timeout`
(STEP_TIMEOUT), whose SIGTERM ends the process at once, so the JSON must already hold every finished part."""

import json
import signal
import subprocess
import sys

from ard_scale.utils.launch import ROOT, launch_env


def test_a_run_stopped_after_its_first_part_keeps_that_part_in_its_json(tmp_path):
    out = tmp_path / "train_step.json"
    argv = [sys.executable, "bench/train_step.py", "--debug", "--parts", "peak,student", "--json", str(out)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        for line in proc.stdout:  # the next part's header is printed once the peak part is over
            lines.append(line)
            if line.startswith("== student_"):
                break
        proc.send_signal(signal.SIGTERM)  # as `timeout` stops it
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert any(line.startswith("== student_") for line in lines), "".join(lines)[-3000:]
    assert out.is_file(), "no JSON after the peak part: a stopped run lost every figure it measured"
    result = json.loads(out.read_text())
    assert result["peak"]["bf16_matmul_tflops"] > 0 and result["peak"]["n"] == 512
    assert result["complete"] is False and result["failed_parts"] == []
    assert "student_pixart_sigma_1024" not in result
