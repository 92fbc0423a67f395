"""A signal-requested stop under torchrun: every rank saves the step it reached and exits 0, so the
torchrun agent exits 0 too, also when the signal killed the ranks' data workers first.

What torch does when the *agent* itself gets SIGTERM (torch 2.14, torch/distributed/elastic/agent/server/api.py,
`SimpleElasticAgent.run`): it forwards SIGTERM to every rank ("Sending process N closing signal SIGTERM"), waits up to
--shutdown_timeout (30 s by default) for them, then re-raises its SignalException, so the agent always exits 1 with
that traceback, whatever its ranks returned. The ranks see exactly the SIGTERM this test sends them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ard_scale.checkpoint.safe_load import verify_dir
from ard_scale.utils.launch import ROOT, launch_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_to_every_rank_checkpoints_and_torchrun_exits_0(tmp_path, workers):
    """With data workers, the SIGTERM reaches them first, as a job-wide one may (Slurm's time limit, scancel,
    pre-emption): torch's worker dies of it, and the rank must still save and exit 0 (ard_scale/trainer/stop.py)."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}", "train.max_steps=1000",
           "checkpoint.every=1000", f"data.num_workers={workers}"]  # fmt: skip
    with open(tmp_path / "stderr", "w") as err:
        agent = subprocess.Popen(cmd, env=launch_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 300
            metrics = run_dir / "metrics.jsonl"
            while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
                assert agent.poll() is None and time.monotonic() < deadline, "the run ended or never got to step 2"
                time.sleep(0.2)  # polling for a file the run writes, not synchronisation
            ranks = children(agent.pid)
            assert len(ranks) == 2, ranks
            data_workers = [w for pid in ranks for w in children(pid)]
            assert len(data_workers) == 2 * workers, data_workers
            for pid in data_workers + ranks:  # what Slurm's job signal does; the agent forwards its own to the ranks
                os.kill(pid, signal.SIGTERM)
            rc = agent.wait(timeout=300)
        finally:
            if agent.poll() is None:
                agent.kill()
    stderr = (tmp_path / "stderr").read_text()
    assert rc == 0, stderr[-4000:]
    assert "Traceback" not in stderr, stderr[-4000:]
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert 2 <= last < 1000
    tag = f"step_{last:08d}"
    assert (run_dir / "checkpoints" / "latest").read_text() == tag  # the step it stopped at was saved
    verify_dir(run_dir / "checkpoints" / tag)


def test_a_usr1_while_the_rank_starts_stops_the_run(tmp_path):
    """The Slurm script's torchrun ignores USR1 and its ranks inherit that until the trainer sets its handler, so a USR1
    while a rank imported and checked its recipe (seconds) was lost: the run trained on to its time limit. The rank
    here reads its recipe from a FIFO, so the signal comes exactly while it is in its recipe check."""
    recipe, run_dir = tmp_path / "recipe.yaml", tmp_path / "run"
    os.mkfifo(recipe)
    cmd = [sys.executable, "launchers/train.py", str(recipe), f"checkpoint.run_dir={run_dir}", "train.max_steps=6",
           "checkpoint.every=1000"]  # fmt: skip
    ignore_usr1 = lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # noqa: E731  (as torchrun's, inherited)
    with open(tmp_path / "stderr", "w") as err:
        rank = subprocess.Popen(cmd, env=launch_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=ignore_usr1)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:  # opening the FIFO's write end succeeds once the rank has opened it to read the recipe
                try:
                    fifo = os.open(recipe, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError:  # ENXIO: no reader yet
                    assert rank.poll() is None and time.monotonic() < deadline, "the rank never read its recipe"
                    time.sleep(0.1)
            rank.send_signal(signal.SIGUSR1)
            os.set_blocking(fifo, True)
            os.write(fifo, (ROOT / "recipes/tiny_cpu.yaml").read_bytes())
            os.close(fifo)
            rc = rank.wait(timeout=300)
        finally:
            if rank.poll() is None:
                rank.kill()
    stderr = (tmp_path / "stderr").read_text()
    assert rc == 0, stderr[-4000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1], stderr[-4000:]  # stopped at the first step boundary, not trained on to step 6
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000001"
    assert "stop signal: checkpoint of step 1" in stderr
