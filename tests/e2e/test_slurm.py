"""launchers/slurm/train.sbatch on a real one-host Slurm (scripts/install_slurm.sh): a 2-task job is pre-empted
mid-run, checkpoints, requeues itself, resumes from `latest` and ends with the loss of an uninterrupted run."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ard_scale.utils.launch import launch_env

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 12
OVERRIDES = [f"train.max_steps={MAX_STEPS}", "checkpoint.every=4"]


def _slurm_running() -> bool:
    """sbatch installed and the controller answering. CI runs scripts/install_slurm.sh first, which fails loudly
    if the cluster does not come up, so this skip never hides a broken Slurm there."""
    if shutil.which("sbatch") is None:
        return False
    try:
        return subprocess.run(["sinfo"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.distributed,
    pytest.mark.skipif(
        not _slurm_running(), reason="no running Slurm here (scripts/install_slurm.sh installs and starts one)"
    ),
]


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def job_fields(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(what: str, condition, timeout_s: float, diagnostics) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{diagnostics()}")
        time.sleep(0.5)


def test_preempted_job_requeues_resumes_and_matches_an_uninterrupted_run(tmp_path):
    slurm_dir, direct_dir, batch_log = tmp_path / "slurm", tmp_path / "direct", tmp_path / "batch.out"
    env = launch_env()  # the venv's tools first on PATH, the package importable, one thread per rank
    # The launchers' DeepSpeed op cache (launch_env; scripts/setup.sh builds the op there), loaded once up front so
    # the Slurm job and the direct run beside it only load a current build and never compile it at the same time.
    build = "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
    subprocess.run([sys.executable, "-c", build], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    train_args = ["recipes/tiny_cpu.yaml", *OVERRIDES]
    submit = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", "--job-name=ard-test-slurm", f"--output={batch_log}"]
        + ["launchers/slurm/train.sbatch", *train_args, f"checkpoint.run_dir={slurm_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    # The uninterrupted reference runs beside the Slurm job (same recipe, overrides and 2 ranks), saving wall time.
    direct_log = (tmp_path / "direct.log").open("w")
    direct = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "launchers/train.py"]
        + [*train_args, f"checkpoint.run_dir={direct_dir}"],
        cwd=ROOT,
        env=env,
        stdout=direct_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a failure below ends the ranks too
    )

    def diagnostics() -> str:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted(slurm_dir.glob("logs/job*/restart*/node*.log")))
        batch = batch_log.read_text() if batch_log.is_file() else ""
        return f"job {job_fields(job_id)}\nsteps {logged_steps(slurm_dir)}\nbatch log:\n{batch}\nnode logs:\n{logs}"

    try:
        wait_for("3 logged steps", lambda: len(logged_steps(slurm_dir)) >= 3, 150, diagnostics)
        # What `#SBATCH --signal=B:USR1@N` does ahead of the time limit: USR1 to the batch shell only.
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=30)
        wait_for("the requeue", lambda: int(job_fields(job_id).get("Restarts", 0)) >= 1, 90, diagnostics)
        steps_before_requeue = logged_steps(slurm_dir)  # the first attempt has ended: the batch shell requeues after
        wait_for(
            "the requeued job to end",
            lambda: job_fields(job_id).get("JobState") in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"},
            150,
            diagnostics,
        )
    finally:
        if job_fields(job_id).get("JobState") not in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}:
            subprocess.run(["scancel", job_id], timeout=30)
        try:
            direct.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(direct.pid, signal.SIGKILL)
            direct.wait()
        direct_log.close()

    fields = job_fields(job_id)
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", diagnostics()
    assert int(fields["Restarts"]) == 1
    assert "restart 1:" in batch_log.read_text()  # SLURM_RESTART_COUNT reached the requeued batch script
    assert "1 CPU thread(s) per rank" in batch_log.read_text()  # launch_env's OMP_NUM_THREADS=1 is kept
    assert 3 <= len(steps_before_requeue) < MAX_STEPS, "the signal must stop the first attempt mid-run"
    # Resumed from the checkpoint the signal wrote: every step logged exactly once, no step rerun from scratch.
    assert logged_steps(slurm_dir) == list(range(1, MAX_STEPS + 1)), diagnostics()
    assert direct.returncode == 0, (tmp_path / "direct.log").read_text()[-4000:]
    slurm_losses = [json.loads(line)["loss"] for line in (slurm_dir / "metrics.jsonl").read_text().splitlines()]
    direct_losses = [json.loads(line)["loss"] for line in (direct_dir / "metrics.jsonl").read_text().splitlines()]
    assert slurm_losses == direct_losses  # bit-identical: the trainer's resume is exact
    assert sorted(p.name for p in (slurm_dir / "logs" / f"job{job_id}").iterdir()) == ["restart0", "restart1"]


def test_tasks_srun_started_without_torchrun_stop_with_one_error(tmp_path):
    """`srun --ntasks=2 python launchers/train.py`, the usual Slurm launch of other frameworks: the tasks have no RANK,
    and each one made a 1-rank run of its own in the same run directory (one trained alone, the other stopped on the
    run lock, "in use by another training run"). Every task now stops before writing anything, the cause said once."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        ["srun", "--ntasks=2", "--job-name=ard-test-srun", sys.executable, "launchers/train.py"]
        + ["recipes/tiny_cpu.yaml", "train.max_steps=2", f"checkpoint.run_dir={run_dir}"],
        cwd=ROOT,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert len(errors) == 1 and "started as Slurm task" in errors[0], proc.stderr[-3000:]
    assert "train.sbatch" in errors[0]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_job_whose_stop_fails_ends_failed_instead_of_requeueing(tmp_path, small_disk):
    """The signal's checkpoint cannot be written (the run directory's disk is full: a real one, a small tmpfs). The
    batch script requeued whatever the step returned, so the requeued job resumed from an older checkpoint (here none),
    trained until the next signal and failed the same way, again and again; now the job ends FAILED and says why."""
    run_dir, batch_log = small_disk(1024) / "run", tmp_path / "batch.out"  # a checkpoint takes ~2 MiB
    submit = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=2", "--job-name=ard-test-slurm-full", f"--output={batch_log}"]
        + ["launchers/slurm/train.sbatch", "recipes/tiny_cpu.yaml", "train.max_steps=1000", "checkpoint.every=1000"]
        + [f"checkpoint.run_dir={run_dir}"],
        cwd=ROOT,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]

    def node_logs(tail: int | None = None) -> str:
        texts = [p.read_text() for p in sorted(run_dir.glob("logs/job*/restart*/node*.log"))]
        return "\n".join(t[-tail:] if tail else t for t in texts)

    def diagnostics() -> str:
        logs = node_logs(tail=3000)
        batch = batch_log.read_text() if batch_log.is_file() else ""
        return f"job {job_fields(job_id)}\nsteps {logged_steps(run_dir)}\nbatch log:\n{batch}\nnode logs:\n{logs}"

    def ended_or_requeued() -> bool:
        fields = job_fields(job_id)
        return int(fields.get("Restarts", 0)) > 0 or fields.get("JobState") in {"COMPLETED", "FAILED", "CANCELLED"}

    try:
        wait_for("2 logged steps", lambda: len(logged_steps(run_dir)) >= 2, 150, diagnostics)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=30)
        wait_for("the job to end", ended_or_requeued, 150, diagnostics)
    finally:
        if job_fields(job_id).get("JobState") not in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}:
            subprocess.run(["scancel", job_id], timeout=30)
            wait_for("the cancelled job to end", lambda: job_fields(job_id).get("JobState") != "RUNNING", 60, str)

    fields = job_fields(job_id)
    assert fields["JobState"] == "FAILED" and fields["Restarts"] == "0", diagnostics()
    batch = batch_log.read_text()
    assert "after the stop signal, so the job is not requeued" in batch and "requeueing job" not in batch, batch
    # the cause, in the node log (the whole log: the other rank's "a peer failed" and torchrun's report come after it)
    assert "could not write checkpoint step_" in node_logs(), diagnostics()
