"""Helpers of the end-to-end tests that train a debug recipe on 2 ranks (imported by basename: the test folders have
no __init__.py)."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

from ard_scale.checkpoint.export import export_student, load_exported_student, sample_noise, student_state_dict
from ard_scale.config import RootConfig, load_config
from ard_scale.diffusion.condition import Condition
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher
from ard_scale.trainer.build import build_schedule, build_teacher_model, embedded_guidance, latent_shape
from ard_scale.utils.launch import torchrun

# replay: steps 1-4 train on the trajectories solved at step 1, so the loss of one fixed batch is followed (it must
# fall), and a resume at step 2 restores the replay cache with the family's conditions
REPLAY = ("train.trajectory_source=replay", "train.replay_times=4")
# the session's shared tiny_cpu run (tests/e2e/conftest.py): 6 steps, saved after steps 3 and 6
TINY_RUN = ("train.max_steps=6", "checkpoint.every=3")


def train(recipe: str, run_dir: Path, *overrides: str):
    """`launchers/train.py RECIPE` on 2 ranks (torchrun), writing to `run_dir`."""
    return torchrun(2, "launchers/train.py", recipe, f"checkpoint.run_dir={run_dir}", *overrides)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def resume_copy(source: Path, step: int, dest: Path) -> Path:
    """A run directory at `dest` holding `source`'s checkpoint of `step` as its latest and the metrics up to it: what
    a run of the same recipe stopped after `step` holds (the same save), without a second launch to make it."""
    tag = f"step_{step:08d}"
    (dest / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / tag, dest / "checkpoints" / tag)
    (dest / "checkpoints" / "latest").write_text(tag)
    lines = (source / "metrics.jsonl").read_text().splitlines(keepends=True)
    (dest / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["step"] <= step))
    return dest


def straight_and_resumed(recipe: str, tmp: Path, *overrides: str) -> dict[str, Path]:
    """Two replay runs of 4 steps: `full` straight through (saving at steps 2 and 4), and `split` resumed at step 2
    from a copy of full's step-2 checkpoint, which must then repeat full's steps 3 and 4 bit for bit."""
    full = tmp / "full"
    saves = ("checkpoint.every=2", "checkpoint.keep_last=2")
    proc = train(recipe, full, *REPLAY, *overrides, *saves, "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-4000:]
    split = resume_copy(full, 2, tmp / "split")
    proc = train(recipe, split, *REPLAY, *overrides, *saves, "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from step 2 " in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    return {"tmp": tmp, "full": full, "split": split}


def assert_loss_falls_and_resume_is_bit_identical(runs: dict[str, Path]) -> None:
    full, split = losses(runs["full"]), losses(runs["split"])
    assert len(full) == 4 and split == full  # bit-identical through the resume at step 2, replay cache included
    assert full[-1] < 0.8 * full[0], full  # the same trajectories four times: the optimiser must reduce the loss


def checkpoint_student(recipe: str, run_dir: Path) -> tuple[RootConfig, Teacher, ARDStudent]:
    """The replay recipe of `straight_and_resumed`, its teacher, and the student of `run_dir`'s latest checkpoint
    (raw weights) built as the trainer builds it."""
    cfg = load_config(recipe, [f"checkpoint.run_dir={run_dir}", *REPLAY])
    teacher = build_teacher_model(cfg)
    schedule = build_schedule(cfg, teacher.patch_size)
    shape, guidance = latent_shape(cfg, teacher), embedded_guidance(cfg, teacher)
    student = ARDStudent(teacher, cfg.student, schedule, latent_shape=shape, guidance=guidance).eval()
    student.load_state_dict(student_state_dict(run_dir, use_ema=False)[0], strict=True)
    return cfg, teacher, student


def export_of(run_dir: Path, out: Path) -> tuple[ARDStudent, dict]:
    """`run_dir`'s raw student exported to `out` and loaded back, with the sampling settings the export records."""
    out = export_student(run_dir, out, use_ema=False)
    return load_exported_student(out), json.loads((out / "ard_config.json").read_text())["sampling"]


def assert_samples_as_the_checkpoint(exported: ARDStudent, checkpoint: tuple, cond: Condition) -> None:
    """The export samples as the checkpoint's student from the export's own noise, and not as the untrained student
    (the teacher's weights) does."""
    cfg, teacher, student = checkpoint
    noise = sample_noise(exported, 2, seed=3)
    assert noise.shape == (2, 4, 8, 8)
    x = exported.sample(noise, cond)
    torch.testing.assert_close(x, student.sample(noise, cond), rtol=1e-5, atol=1e-6)
    init = ARDStudent(teacher, cfg.student, build_schedule(cfg, teacher.patch_size)).eval()
    assert (init.sample(noise, cond) - x).abs().max() > 1e-4


def shared_run(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A run directory built once per pytest session, also across pytest-xdist workers (which run other test files
    at the same time): the first worker to ask calls `build(folder)` under a file lock in the workers' common
    temporary folder, and the others wait for it and read the same folder. A failed build leaves no folder marked
    complete, so the next test to ask builds it again (and reports its own failure)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-N/popen-gwK -> .../pytest-N, shared by this session's workers
    folder, complete = root / name, root / f"{name}.complete"
    with FileLock(str(root / f"{name}.lock")):
        if not complete.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            complete.touch()
    return folder
