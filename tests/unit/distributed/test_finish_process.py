"""`finish_process`: a finished rank runs its atexit handlers, flushes, and ends with the given status before the
interpreter finalises any object (where a gloo group DeepSpeed still references aborts the process, SIGABRT)."""

import subprocess
import sys

from ard_scale.utils.launch import ROOT, launch_env

CHILD = """
import atexit, sys
from ard_scale.distributed.engines import finish_process

class Finalised:
    def __del__(self):
        print("finalised", flush=True)   # a C++ group's destructor would run here, in finalisation

keep = Finalised()                        # a module global: only interpreter finalisation deletes it
atexit.register(lambda: print("atexit ran"))
print("buffered", end="")                 # no newline, no flush: finish_process flushes it
sys.stderr.write("err buffered")
finish_process(3)
print("not reached")
"""


def test_finish_process_runs_atexit_flushes_and_skips_finalisation():
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("buffered") and "atexit ran" in proc.stdout
    assert "err buffered" in proc.stderr
    assert "finalised" not in proc.stdout and "not reached" not in proc.stdout
