"""The logic of launchers/slurm/train.sbatch, run in plain bash from launchers/slurm/lib.sh (the batch script sources
it); the script itself runs on a real Slurm in tests/e2e/test_slurm.py."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`script` after sourcing lib.sh, in a bash with only `env` (and PATH) set."""
    return subprocess.run(
        ["bash", "-c", f"source launchers/slurm/lib.sh\n{script}"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_run_at_max_steps_is_finished_and_is_not_requeued(tmp_path):
    """A USR1 during the last step (or after it) used to requeue the job: the requeued job resumed at max_steps and
    exited, and with a time limit under the signal's lead every attempt was signalled at start and requeued again."""
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()

    def finished(latest: str | None, max_steps: int) -> bool:
        (checkpoints / "latest").unlink(missing_ok=True)
        if latest is not None:
            (checkpoints / "latest").write_text(latest + "\n")
        proc = bash(f'ard_run_finished "{tmp_path}" {max_steps}')
        assert proc.stderr == ""
        return proc.returncode == 0

    assert finished("step_00000012", 12) and finished("step_00000020", 12)  # a resume that lowered max_steps
    assert finished("step_00000100", 100)  # 8 digits with leading zeros: not read as octal
    assert not finished("step_00000008", 12)  # stopped early: requeue
    assert not finished(None, 12)  # nothing saved yet
    assert not finished("garbage", 12)


def test_a_run_whose_data_ran_out_is_finished_and_is_not_requeued(tmp_path):
    """A run whose finite data ends before train.max_steps, signalled as it ended, was requeued: the requeued job
    resumed, found no data and ended (and, signalled at start under a short time limit, was requeued again and again).
    The trainer's RUN_DIR/data_ended names the checkpoint where the data ran out; while it is the latest, the run is
    finished (the e2e run writing it: tests/e2e/test_data_faults.py)."""
    (tmp_path / "checkpoints").mkdir()

    def finished(latest: str | None, ended: str | None) -> bool:
        for path, text in ((tmp_path / "checkpoints" / "latest", latest), (tmp_path / "data_ended", ended)):
            path.unlink(missing_ok=True)
            if text is not None:
                path.write_text(text)
        proc = bash(f'ard_run_finished "{tmp_path}" 12')
        assert proc.stderr == ""
        return proc.returncode == 0

    assert finished("step_00000009", "step_00000009")
    assert finished(None, "step_00000000")  # data that yielded nothing: no checkpoint
    assert not finished("step_00000009", None)
    assert not finished("step_00000011", "step_00000009")  # a later run (more data.num_epochs) trained on
    assert not finished(None, None)


def test_ranks_per_node_are_the_gpus_else_the_tasks_and_an_uneven_layout_is_refused():
    """`sbatch --nodes=2 --ntasks=3` gives SLURM_TASKS_PER_NODE=2,1, which reached torchrun's --nproc_per_node as
    "2,1" (torchrun's own unclear error on every node); it is now refused before anything starts, naming the fix."""

    def ranks(**env: str) -> subprocess.CompletedProcess:
        return bash("ard_ranks_per_node", env)

    assert ranks(SLURM_GPUS_ON_NODE="8", SLURM_TASKS_PER_NODE="1(x4)").stdout == "8\n"
    assert ranks(SLURM_TASKS_PER_NODE="2(x3)").stdout == "2\n"
    assert ranks(SLURM_TASKS_PER_NODE="2").stdout == "2\n"
    uneven = ranks(SLURM_TASKS_PER_NODE="2,1", SLURM_NTASKS_PER_NODE="2")
    assert uneven.returncode != 0 and uneven.stdout == ""
    assert uneven.stderr.count("\n") == 1 and "SLURM_TASKS_PER_NODE=2,1" in uneven.stderr
    assert "--ntasks-per-node" in uneven.stderr


def test_gpus_counted_per_job_on_several_nodes_are_refused_naming_gpus_per_node():
    """Ranks per node came from the batch node's SLURM_GPUS_ON_NODE alone: `sbatch --nodes=2 --gpus=12` may get 8 GPUs
    on one node and 4 on the other, and the other node's torchrun started 8 ranks on 4 GPUs (or its srun step could
    not be made). A job-wide GPU count on several nodes, or GPUs per task over uneven tasks, is refused before
    anything starts; per-node counts (--gpus-per-node, --gres=gpu:K) and one node pass."""

    def ranks(**env: str) -> subprocess.CompletedProcess:
        return bash("ard_ranks_per_node", env)

    per_job = ranks(SLURM_GPUS_ON_NODE="8", SLURM_GPUS="12", SLURM_JOB_NUM_NODES="2", SLURM_TASKS_PER_NODE="1(x2)")
    assert per_job.returncode != 0 and per_job.stdout == "", per_job
    assert per_job.stderr.count("\n") == 1 and "--gpus=12" in per_job.stderr and "(this one has 8)" in per_job.stderr
    assert "submit with --gpus-per-node=K" in per_job.stderr, per_job.stderr
    per_task = ranks(
        SLURM_GPUS_ON_NODE="2", SLURM_GPUS_PER_TASK="1", SLURM_JOB_NUM_NODES="2", SLURM_TASKS_PER_NODE="2,1"
    )
    assert (
        per_task.returncode != 0
        and "SLURM_TASKS_PER_NODE=2,1" in per_task.stderr
        and "--ntasks-per-node" in per_task.stderr
    )
    even = {"SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "1(x2)"}
    assert ranks(**even, SLURM_GPUS_PER_NODE="8").stdout == "8\n"  # --gpus-per-node=8
    assert ranks(**even, SLURM_GPUS_PER_NODE="8", SLURM_GPUS="16").stdout == "8\n"  # both: per node governs
    assert ranks(**even).stdout == "8\n"  # --gres=gpu:8 (per node; sets no SLURM_GPUS*)
    assert ranks(**{**even, "SLURM_JOB_NUM_NODES": "1"}, SLURM_GPUS="8").stdout == "8\n"  # one node: all of them
    one_task_each = ranks(SLURM_GPUS_ON_NODE="1", SLURM_JOB_NUM_NODES="2", SLURM_TASKS_PER_NODE="2,1")
    assert one_task_each.stdout == "1\n"  # uneven tasks, but ranks follow the per-node GPUs (e.g. --gres=gpu:1)


def test_each_nodes_step_takes_the_cpus_every_node_has():
    """The srun step asked for the batch node's SLURM_CPUS_ON_NODE on every node, and threads were its share: on a
    job over nodes of 72 and 36 CPUs (--exclusive on a mixed partition) with the batch node the larger, the step
    could not be made on the smaller node. It now takes the fewest any node has, and says the nodes differ."""
    mixed = bash("ard_node_cpus", {"SLURM_JOB_CPUS_PER_NODE": "72(x2),36", "SLURM_CPUS_ON_NODE": "72"})
    assert mixed.stdout == "36\n" and "SLURM_JOB_CPUS_PER_NODE=72(x2),36" in mixed.stderr, mixed
    assert mixed.stderr.count("\n") == 1
    same = bash("ard_node_cpus", {"SLURM_JOB_CPUS_PER_NODE": "96(x4)", "SLURM_CPUS_ON_NODE": "96"})
    assert (same.stdout, same.stderr) == ("96\n", "")
    assert bash("ard_node_cpus", {"SLURM_CPUS_ON_NODE": "8"}).stdout == "8\n"
    assert bash("ard_node_cpus").stdout == "1\n"  # outside Slurm


def test_each_rank_gets_its_share_of_the_nodes_cpus():
    """Under the batch script torchrun gave each of several ranks OMP_NUM_THREADS=1 (slow for a CPU-offloaded
    optimizer); the script now exports the node's CPUs over its ranks, at least 1."""
    shares = bash("for a in '96 8' '97 8' '4 8' '1 1'; do ard_omp_threads $a; done")
    assert shares.stdout.split() == ["12", "12", "1", "1"], shares.stderr


def test_a_usr1_while_the_batch_script_starts_does_not_end_it(tmp_path):
    """Slurm may send the pre-emption USR1 as the batch shell starts (a time limit near the signal's lead). The trap
    was installed only once the training step ran, so a USR1 before that ended the shell (bash's default): no
    checkpoint, no requeue. Here it comes while the script reads the recipe; the script goes on (and, run outside
    Slurm, stops at its first Slurm variable)."""
    proc = subprocess.Popen(
        ["bash", "launchers/slurm/train.sbatch", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={tmp_path}"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not any("python" in cmd for cmd in descendant_cmdlines(proc.pid)):  # the script reads the recipe
            assert proc.poll() is None and time.monotonic() < deadline, "the script never started its Python"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGUSR1)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, f"the batch shell ended with {proc.returncode} (-10: killed by USR1)\n{stderr}"
    assert "SLURM_JOB_NODELIST: unbound variable" in stderr


def descendant_cmdlines(pid: int) -> list[str]:
    """The command lines of every process below `pid` (Linux /proc)."""
    cmdlines = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            try:
                cmdlines.append(Path(f"/proc/{child}/cmdline").read_text().replace("\0", " "))
            except FileNotFoundError:
                continue
            cmdlines += descendant_cmdlines(int(child))
    return cmdlines
