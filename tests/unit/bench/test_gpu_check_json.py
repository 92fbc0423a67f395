"""bench/gpu_check.py keeps what it measured when it is stopped part-way: on a lent GPU the whole check runs under
the device's time limit, so its JSON is rewritten after every section (as bench/train_step.py's after every part)."""

import json
import signal
import subprocess
import sys

from ard_scale.utils.launch import ROOT, launch_env


def test_a_run_stopped_after_its_first_section_keeps_that_section_in_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    argv = [sys.executable, "bench/gpu_check.py", "--cpu", "--json", str(out)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        for line in proc.stdout:  # the next section's header is printed once the environment section is over
            lines.append(line)
            if line.startswith("== invariants"):
                break
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert any(line.startswith("== invariants") for line in lines), "".join(lines)[-3000:]
    assert out.is_file(), "no JSON after the environment section: a stopped run lost every figure it measured"
    result = json.loads(out.read_text())
    assert result["environment"]["python"] == sys.version.split()[0]
    assert result["complete"] is False and result["failed_sections"] == []
    assert "invariants" not in result
