"""The GAN stage through launchers/train.py on 2 ranks (ZeRO-3, gloo): started from a regression run's checkpoint,
resumed mid-stage bit-identically, the same at ZeRO stage 0; a recipe without real images and a mismatched init run
are clear errors."""

import json
import re
from pathlib import Path

import pytest
from recipe_runs import resume_copy

from ard_scale.checkpoint.export import load_student_weights
from ard_scale.config import ConfigError, load_config
from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher
from ard_scale.utils.launch import torchrun

GAN_KEYS = {"loss", "loss_g", "loss_d", "gan_weight", "d_real", "d_fake", "grad_norm"}
GAN = ["gan.enabled=true", "gan.warmup_steps=1", "gan.r1_weight=0.1", "gan.init_from_ema=false"]


def train(run_dir: Path, *overrides: str, launcher: str = "torchrun"):
    args = ("launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}", *overrides)
    proc = torchrun(2, *args, launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "pulling the student off its teacher" not in proc.stderr  # the divergence watchdog stays quiet
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.distributed
def test_gan_stage_starts_from_a_regression_run_and_resumes_bit_identically(tiny_run, tmp_path):
    regression = tiny_run  # 6 regression steps (tests/e2e/conftest.py)
    full, split = tmp_path / "full", tmp_path / "split"
    init = f"gan.init_from={regression}"
    started = train(full, *GAN, init, "train.max_steps=3", "checkpoint.every=2")
    assert started.stderr.count(f"the GAN stage's student starts from {regression}/checkpoints/step_") == 1
    resume_copy(full, 2, split)  # what a GAN run stopped after step 2 holds
    resumed = train(split, *GAN, init, "train.max_steps=3", "checkpoint.every=2")
    assert "resumed from step 2 " in resumed.stderr  # from its own step-2 checkpoint, not from init_from
    assert "the GAN stage's student starts from" not in resumed.stderr
    # ZeRO stage 0 (replicated teacher), started by DeepSpeed's own launcher: the same numbers. The adaptive weight's
    # gradients never run a backward into the engine's (DeepSpeed-hooked) output, which ZeRO 0 refuses and ZeRO 1-2
    # answer by reducing an empty bucket.
    stage0 = tmp_path / "stage0"
    train(stage0, *GAN, init, "train.max_steps=3", "zero.stage=0", "zero.teacher_stage=0", launcher="deepspeed")

    uninterrupted, pieces, reg = metrics(full), metrics(split), metrics(regression)
    assert [m["step"] for m in pieces] == [1, 2, 3]
    for key in GAN_KEYS:
        assert [m[key] for m in pieces] == [m[key] for m in uninterrupted], key  # bit-identical, fp32, 2 ranks
    assert uninterrupted[0]["gan_weight"] == 0 and uninterrupted[0]["loss_g"] == 0  # warm-up step
    assert all(m["gan_weight"] > 0 for m in uninterrupted[1:])
    assert all(m["loss_d"] > 0 for m in uninterrupted)
    # Step 1 sees the same batch and trajectory noise as the regression run's step 1 (both keyed on step 0): only
    # the student differs, and the one loaded from the trained run is better than a fresh one.
    assert uninterrupted[0]["loss"] < 0.9 * reg[0]["loss"]
    for key in GAN_KEYS:
        assert [m[key] for m in metrics(stage0)] == pytest.approx([m[key] for m in uninterrupted], rel=1e-5), key

    # another student layout cannot start from that run: the differing ARD setting is named
    teacher = build_teacher("dit", "debug", num_embeds_ada_norm=10)
    other = ARDStudent(teacher, ARDConfig(num_steps=4, num_causal_layers=1), VPSchedule())
    with pytest.raises(ValueError, match="num_causal_layers: 2 there, 1 here"):
        load_student_weights(other, regression)


def test_gan_without_real_images_is_a_clear_error():
    with pytest.raises(ConfigError, match="gan.enabled trains on one micro-batch per step"):
        load_config("recipes/tiny_cpu.yaml", ["gan.enabled=true", "train.grad_accum=2"])
    with pytest.raises(ConfigError, match="gan.enabled needs real images"):
        load_config(
            "recipes/tiny_cpu.yaml",
            ["gan.enabled=true", "train.trajectory_source=offline", "data.trajectory_path=/x", "data.path=null"],
        )
    with pytest.raises(ConfigError, match="gan.warmup_steps: 3000 warm-up steps .* train.max_steps=4: the adversarial"):
        load_config("recipes/tiny_cpu.yaml", ["gan.enabled=true"])  # tiny_cpu runs 4 steps
    assert load_config("recipes/tiny_cpu.yaml", ["gan.enabled=true", "gan.warmup_steps=3"]).gan.warmup_steps == 3
    with pytest.raises(ValueError, match="has no checkpoints/ folder"):
        teacher = build_teacher("dit", "debug", num_embeds_ada_norm=10)
        load_student_weights(ARDStudent(teacher, ARDConfig(num_steps=4, num_causal_layers=2), VPSchedule()), "/nope")


@pytest.mark.slow
@pytest.mark.distributed
def test_the_divergence_watchdog_warns_once_and_stops_with_a_checkpoint(tmp_path):
    """A GAN weight of 1e4 at lr 2e-2 drives the regression loss up ~5x within a few steps: the watchdog names the
    numbers and the settings to change, and with gan.stop_on_divergence the run saves and stops there."""
    run_dir = tmp_path / "diverging"
    args = ("launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}", "train.max_steps=12",
            "gan.enabled=true", "gan.warmup_steps=1", "gan.adaptive=false", "gan.weight=1e4", "train.lr=2e-2",
            "gan.stop_on_divergence=true", "checkpoint.every=100")  # fmt: skip
    proc = torchrun(2, *args)
    assert proc.returncode != 0
    assert proc.stderr.count("the GAN stage is pulling the student off its teacher") == 1  # rank 0, once
    assert "gan.adaptive_lambda" in proc.stderr and "gan.d_lr" in proc.stderr
    logged = metrics(run_dir)
    fired = logged[-1]["step"]
    assert fired < 12 and proc.stderr.count(f"error: gan.stop_on_divergence: stopped at step {fired} with a") == 1
    assert re.search(r'File "[^"]*(ard_scale|launchers)/', proc.stderr) is None, proc.stderr[-3000:]  # no traceback
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{fired:08d}"
    assert logged[-1]["loss"] > 3 * logged[0]["loss"]  # it did diverge from the warm-up step's loss
