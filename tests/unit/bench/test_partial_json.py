"""The GPU scripts keep what they measured when they are stopped part-way: gpu_check.sh runs bench/train_step.py under
`timeout` (STEP_TIMEOUT), whose SIGTERM ends the process at once, and on a lent GPU the whole check runs under the
device's time limit, so each JSON must already hold every finished part (train_step.py) or section (gpu_check.py)."""

import json
import signal
import subprocess
import sys

from ard_scale.utils.launch import ROOT, launch_env


def stopped_at(argv: list[str], header: str) -> list[str]:
    """Run `argv`, SIGTERM it (as `timeout` does) once it prints a line starting with `header` (the next part has
    begun: the one before is over); the lines it printed."""
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(header):
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert any(line.startswith(header) for line in lines), "".join(lines)[-3000:]
    return lines


def test_train_step_stopped_after_its_first_part_keeps_that_part_in_its_json(tmp_path):
    out = tmp_path / "train_step.json"
    stopped_at(
        [sys.executable, "bench/train_step.py", "--debug", "--parts", "peak,student", "--json", str(out)], "== student_"
    )
    assert out.is_file(), "no JSON after the peak part: a stopped run lost every figure it measured"
    result = json.loads(out.read_text())
    assert result["peak"]["bf16_matmul_tflops"] > 0 and result["peak"]["n"] == 512
    assert result["complete"] is False and result["failed_parts"] == []
    assert "student_pixart_sigma_1024" not in result


def test_gpu_check_stopped_after_its_first_section_keeps_that_section_in_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    stopped_at([sys.executable, "bench/gpu_check.py", "--cpu", "--json", str(out)], "== invariants")
    assert out.is_file(), "no JSON after the environment section: a stopped run lost every figure it measured"
    result = json.loads(out.read_text())
    assert result["environment"]["python"] == sys.version.split()[0]
    assert result["complete"] is False and result["failed_sections"] == []
    assert "invariants" not in result
