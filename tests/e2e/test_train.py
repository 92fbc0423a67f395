"""launchers/train.py end to end on 2 ranks (real DeepSpeed ZeRO-3 on gloo): metrics, exact resume, bad recipes."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from recipe_runs import TINY_RUN, resume_copy

from ard_scale.utils.launch import torchrun

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {
    "step",
    "loss",
    "loss_per_step",
    "lr",
    "grad_norm",
    "samples_per_s",
    "teacher_s",
    "student_s",
    "max_mem_gb",
    "skipped_samples",
    "nan_skips",
}


def train(run_dir: Path, *overrides: str, world: int = 2) -> subprocess.CompletedProcess:
    return torchrun(world, "launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}", *overrides)


def metrics(run_dir: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"{constant} in metrics.jsonl is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.distributed
def test_resume_continues_the_loss_sequence_bit_identically(tiny_run, tmp_path):
    full = tiny_run  # 6 steps, saved after steps 3 and 6 (tests/e2e/conftest.py)
    # the step-3 checkpoint as a run stopped there holds it (a stopped run resumed by the same command with a later
    # train.max_steps: tests/e2e/test_train_lora.py)
    split = resume_copy(full, 3, tmp_path / "split")
    resumed = train(split, *TINY_RUN)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed.stderr.count("[ard_scale] resumed from step 3 (") == 1  # rank 0 says it, once
    assert f"checkpoints  {split / 'checkpoints'} (latest: step_00000006)" in resumed.stderr  # the end-of-run summary
    assert "FutureWarning" not in resumed.stderr  # DeepSpeed's per-step deprecation warnings are filtered

    uninterrupted, pieces = metrics(full), metrics(split)
    assert [m["step"] for m in pieces] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in pieces] == [m["loss"] for m in uninterrupted]  # bit-identical, fp32, 2 ranks
    assert all(REQUIRED <= m.keys() for m in uninterrupted)
    assert all(m["nan_skips"] == 0 and m["skipped_samples"] == 0 for m in uninterrupted)
    assert (full / "config.yaml").is_file() and (full / "metrics.png").is_file()  # drawn at the end of the run


@pytest.mark.slow
@pytest.mark.distributed
def test_a_resume_may_switch_zero_offload_on(tiny_run, tmp_path):
    """The recipe check lets zero.offload_* change on resume (a run moved to GPUs with less memory): the optimizer
    state saved without offload loads into the offloaded engine, which then trains as the run went on without it."""
    split = resume_copy(tiny_run, 3, tmp_path / "offload")
    resumed = train(split, *TINY_RUN, "zero.offload_optimizer=true", "zero.offload_params=true")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed.stderr.count("[ard_scale] resumed from step 3 (") == 1
    uninterrupted, pieces = metrics(tiny_run), metrics(split)
    assert [m["step"] for m in pieces] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in pieces] == pytest.approx([m["loss"] for m in uninterrupted], rel=1e-5)


@pytest.mark.distributed
def test_a_refused_resume_leaves_the_runs_config_yaml_and_names_the_real_cause_first(tiny_run, tmp_path):
    """RUN_DIR/config.yaml is the recipe the run trains under: a resume its checkpoint refuses must not overwrite it
    with the refused recipe. A LoRA recipe on a full student's checkpoint is refused as such, not as a recipe change
    that checkpoint.allow_recipe_change would pass (it would not)."""
    split = resume_copy(tiny_run, 3, tmp_path / "split")
    shutil.copy(tiny_run / "config.yaml", split / "config.yaml")
    before = (split / "config.yaml").read_text()
    changed = train(split, *TINY_RUN, "train.lr=0.5")
    said_once(changed, "was written with a different recipe; differing keys: train.lr: 0.001 -> 0.5")
    assert (split / "config.yaml").read_text() == before
    lora = train(split, *TINY_RUN, "student.lora.rank=4", world=1)  # checked before the number of ranks
    said_once(lora, "holds a full student, but this recipe builds a LoRA student")
    assert "allow_recipe_change" not in lora.stderr
    assert f"see {split / 'checkpoints' / 'step_00000003' / 'config.yaml'}" in lora.stderr
    assert (split / "config.yaml").read_text() == before
    # allowed, the new learning rate is the one the resumed steps take (DeepSpeed restored the saved one)
    allowed = train(split, *TINY_RUN, "train.max_steps=4", "train.lr=0.0005", "checkpoint.allow_recipe_change=true")
    assert allowed.returncode == 0, allowed.stderr[-4000:]
    assert [(m["step"], m["lr"]) for m in metrics(split) if m["step"] > 3] == [(4, 0.0005)]


def test_a_malformed_recipe_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "launchers/train.py", "recipes/tiny_cpu.yaml", "train.max_stpes=3", "student.mask=banana"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "train.max_stpes" in proc.stderr and "student.mask" in proc.stderr and "causal" in proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_nan_losses_are_skipped_then_stop_with_a_checkpoint_and_a_clear_error(tmp_path):
    """The largest learning rate the config allows, unclipped, drives the loss to Inf/NaN: those steps are skipped
    and counted, metrics.jsonl stays strict JSON (non-finite numbers as null), and after train.max_consecutive_nan
    in a row the run saves a checkpoint and stops with an error that says so. (train.lr=1e30 is a ConfigError.)"""
    run_dir = tmp_path / "nan"
    proc = train(
        run_dir,
        "train.max_steps=12",
        "train.lr=1.0",
        "train.grad_clip=null",
        "train.max_consecutive_nan=2",
        "checkpoint.every=100",
    )
    assert proc.returncode != 0
    said_once(proc, "error: the loss or its gradient was NaN/Inf for 2 steps in a row")
    assert "Resume it with a lower train.lr and checkpoint.allow_recipe_change=true, check" in proc.stderr
    logged = metrics(run_dir)  # parse_constant refuses NaN/Infinity: strict JSON
    assert logged[-1]["nan_skips"] >= 2 and logged[-1]["nan"]
    # here the gradient norm overflows while the loss is still finite: logged as null (was Infinity, not JSON), and
    # that step counts as NaN-skipped
    assert any(m["loss"] is not None and m["grad_norm"] is None and m["nan"] for m in logged), logged
    stopped_at = logged[-1]["step"]
    assert stopped_at < 12
    assert (run_dir / "checkpoints" / "latest").read_text().strip().endswith(f"{stopped_at:08d}")

    # the refusal of a resume on another number of ranks is one line too (one rank: the recipe, compared first, is
    # this checkpoint's own; another recipe's one line, 2 ranks saying it once: test_a_refused_resume_...)
    fewer = train(run_dir, "train.max_steps=12", "train.lr=1.0", "train.grad_clip=null",
                  "train.max_consecutive_nan=2", "checkpoint.every=100", world=1)  # fmt: skip
    said_once(fewer, "was written by 2 ranks and this run has 1. To resume it on 1, convert it once with")
    assert "then rerun the same command" in fewer.stderr


def said_once(proc: subprocess.CompletedProcess, message: str) -> None:
    """The launch failed with `message` on one `error:` line and no traceback from the ranks (torchrun's agent adds
    its own ChildFailedError summary for any failed rank)."""
    assert proc.returncode != 0
    assert proc.stderr.count(message) == 1, proc.stderr[-3000:]
    assert re.search(r'File "[^"]*(ard_scale|launchers)/', proc.stderr) is None, proc.stderr[-3000:]


def test_every_missing_path_of_a_recipe_is_one_error_printed_once_before_anything_is_built(tmp_path):
    proc = train(
        tmp_path / "run",
        "data.path=/nowhere/shards",
        "teacher.path=/nowhere/teacher",
        "teacher.size=null",
        "vae.size=null",
        "vae.path=/nowhere/vae",
    )
    assert proc.returncode != 0
    # no traceback from the ranks (torchrun's agent adds its own ChildFailedError summary for any failed rank)
    assert re.search(r'File "[^"]*(ard_scale|launchers)/', proc.stderr) is None, proc.stderr[-3000:]
    assert proc.stderr.count("invalid config") == 1  # one rank prints; no per-rank repeats
    for key in (
        "data.path: webdataset path '/nowhere/shards'",
        "teacher.path: '/nowhere/teacher'",
        "vae.path: '/nowhere/vae'",
    ):
        assert key in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was built or written


def test_the_bundled_recipe_checks_out_from_any_working_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ard_scale.config", str(ROOT / "recipes" / "tiny_cpu.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "bundled:digits/webdataset" in proc.stdout
