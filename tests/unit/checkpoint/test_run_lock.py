"""One training run per run directory: a second run stops before it writes anything, naming the first; the lock
goes with its holder's process, however that ends. A run directory the run cannot write in is one clear error."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from one_process import LAUNCHER_KEYS

from ard_scale.checkpoint.run_lock import LOCK_FILE, RunDirInUse, lock_run_dir
from ard_scale.errors import UserError
from ard_scale.utils.launch import ROOT, launch_env, torchrun

HOLD = """import sys
from ard_scale.checkpoint.run_lock import lock_run_dir
lock_run_dir(sys.argv[1], 0)
print("held", flush=True)
sys.stdin.read()"""


@pytest.fixture
def holder(tmp_path):
    """A process that holds tmp_path/run's lock until its stdin closes (or it is killed)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline() == "held\n"
    yield run_dir, proc
    proc.kill()
    proc.wait()


def test_a_held_run_dir_is_refused_naming_its_holder_until_the_holder_dies(holder):
    run_dir, proc = holder
    with pytest.raises(RunDirInUse) as refused:
        lock_run_dir(run_dir, rank=0)
    message = str(refused.value)
    assert message.startswith(f"{run_dir.resolve()} is in use by another training run (pid {proc.pid} on ")
    assert f"on {socket.gethostname()}, since " in message and "-c" in message  # its command line
    assert message.endswith("wait for that run to end or stop it, or give this one another checkpoint.run_dir")
    lock_run_dir(run_dir, rank=1)  # not rank 0: takes nothing, and without a process group decides nothing
    proc.send_signal(signal.SIGKILL)  # no clean-up: the kernel releases the lock with the process
    proc.wait()
    lock_run_dir(run_dir, rank=0)
    lock_run_dir(run_dir, rank=0)  # held by this process already: again is fine
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_second_training_run_in_a_held_folder_stops_before_writing(holder):
    run_dir, proc = holder
    done = torchrun(2, ROOT / "launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # one for both ranks
    assert len(errors) == 1 and f"is in use by another training run (pid {proc.pid} on" in errors[0], done.stderr
    assert done.stderr.count("exitcode  : 1 ") == 2, done.stderr  # both ranks stopped on it, none was killed
    assert sorted(os.listdir(run_dir)) == [LOCK_FILE]  # no config.yaml, metrics or checkpoints of its own


def test_a_run_dir_it_cannot_write_in_is_one_clear_error_not_a_traceback(tmp_path, small_disk):
    disk = small_disk(1024)
    (disk / "existing").mkdir()  # a run resumed after its filesystem went read-only, and a new run there
    small_disk(1024, read_only=True)
    with pytest.raises(UserError, match="Read-only file system") as refused:
        lock_run_dir(disk / "existing", rank=0)
    assert not isinstance(refused.value, RunDirInUse)
    env = {k: v for k, v in launch_env().items() if k not in LAUNCHER_KEYS}  # one rank, no launcher
    for run_dir in (disk / "existing", disk / "new"):
        command = [sys.executable, "launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"error: cannot write in checkpoint.run_dir {run_dir} ("), errors
        assert "Read-only file system" in errors[0], errors
        assert errors[0].endswith("or give checkpoint.run_dir a folder it can write"), errors
