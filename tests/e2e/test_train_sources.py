"""launchers/train.py on 2 ranks (real DeepSpeed ZeRO-3 on gloo), tiny_cpu recipe: trajectory replay (teacher every R
steps, exact mid-cycle resume), TensorBoard mirroring metrics.jsonl, offline trajectories from the dump launcher,
gradient accumulation with activation checkpointing, and a 2 -> 1 rank resume through the universal conversion."""

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from recipe_runs import resume_copy

from ard_scale.checkpoint.universal import to_universal
from ard_scale.utils.launch import torchrun

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def train(run_dir: Path, *overrides: str, world: int = 2) -> subprocess.CompletedProcess:
    proc = torchrun(
        world, "launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}", *overrides, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


REPLAY = ("train.trajectory_source=replay", "train.replay_times=2")
REPLAY_RUN = (*REPLAY, "log.tensorboard=true", "checkpoint.every=3")


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory) -> Path:
    """5 uninterrupted steps with replay R=2 and TensorBoard on, saving after step 3; step 1 is also the plain online
    run's step 1."""
    run_dir = tmp_path_factory.mktemp("replay") / "full"
    train(run_dir, *REPLAY_RUN, "train.max_steps=5")
    return run_dir


def test_replay_calls_the_teacher_every_r_steps_and_resumes_mid_cycle_bit_identically(replay_run, tmp_path):
    # the step-3 checkpoint, as a run stopped after step 3 (the first step of the cycle {3, 4}) holds it
    split = resume_copy(replay_run, 3, tmp_path / "split")
    proc = train(split, *REPLAY_RUN, "train.max_steps=5")  # step 4 must replay step 3's trajectories from it
    assert "resumed from step 3 " in proc.stderr
    full, pieces = metrics(replay_run), metrics(split)
    assert [m["teacher_batches"] for m in full] == [1, 0, 1, 0, 1]  # one teacher solve per micro-batch per cycle
    assert [m["step"] for m in pieces] == [1, 2, 3, 4, 5]
    assert [m["loss"] for m in pieces] == [m["loss"] for m in full]  # bit-identical through the mid-cycle stop
    assert [m["teacher_batches"] for m in pieces] == [1, 0, 1, 0, 1]  # the resumed run solved nothing at step 4


def test_tensorboard_holds_the_scalars_of_metrics_jsonl(replay_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(replay_run / "tensorboard"))
    events.Reload()
    logged = metrics(replay_run)
    tags = set(events.Tags()["scalars"])
    assert {"loss", "grad_norm", "lr", "teacher_s", "samples_per_s", "loss_per_step/0", "loss_per_step/3"} <= tags
    for key in ("loss", "grad_norm", "lr", "teacher_batches", "samples_seen"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [m["step"] for m in logged], key
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in logged], rel=1e-6), key  # float32 there
    per_step_3 = [s.value for s in events.Scalars("loss_per_step/3")]
    assert per_step_3 == pytest.approx([m["loss_per_step"][3] for m in logged], rel=1e-6)


def test_grad_accum_with_activation_checkpointing_matches_the_full_batch_then_resumes_on_one_rank(replay_run, tmp_path):
    """data.batch_size 1 × grad_accum 2 with activation checkpointing sees the same samples, seeds and weights at step
    1 as batch 2 × grad_accum 1 (micro-batch seeds are numbered after the rank): the same loss and pre-clip gradient
    norm up to float32 summation order. Then the run is converted to a universal checkpoint and resumed on 1 rank."""
    run_dir = tmp_path / "accum"
    common = ("data.batch_size=1", "train.grad_accum=2", "train.activation_checkpointing=true")
    train(run_dir, *common, "train.max_steps=6", "checkpoint.every=6")
    accum, reference = metrics(run_dir), metrics(replay_run)
    assert accum[0]["loss"] == pytest.approx(reference[0]["loss"], rel=1e-5)
    assert accum[0]["grad_norm"] == pytest.approx(reference[0]["grad_norm"], rel=1e-4)
    assert accum[0]["loss_per_step"] == pytest.approx(reference[0]["loss_per_step"], rel=1e-5)
    assert [m["samples_seen"] for m in accum] == [4 * s for s in range(1, 7)]  # 1 sample × 2 ranks × 2 micro-batches
    state = torch.load(
        run_dir / "checkpoints" / "step_00000006" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False
    )
    assert state["global_steps"] == 6  # one optimizer step per 2 micro-batches

    # 2 -> 1 rank through the trainer: convert, rerun the same command on 1 rank
    to_universal(run_dir)
    train(run_dir, *common, "train.max_steps=8", world=1)
    logged = metrics(run_dir)
    assert [m["step"] for m in logged] == [*range(1, 9)]
    before, resumed = [m["loss"] for m in logged[3:6]], [m["loss"] for m in logged[6:]]
    assert all(math.isfinite(x) for x in resumed)
    # No jump: the trained weights and optimizer carry over. This recipe's per-batch loss spread after the first
    # steps is about ±30 % (batches of 2 samples), while a resume that lost the weights restarts at the untrained
    # loss (step 1), well above every trained one.
    assert max(resumed) < logged[0]["loss"] * 0.8
    assert 0.5 * min(before) < sum(resumed) / len(resumed) < 1.5 * max(before)
    # The optimizer state carried over: AdamW's second moment two steps on is v8 = β2²·v6 + (1-β2)(β2·g7² + g8²)
    # >= β2²·v6 for every element, which an optimizer restarted on 1 rank (v8 from g7, g8 only) breaks.
    to_universal(run_dir)  # the 1-rank step-8 checkpoint, per parameter as step 6's
    v6, v8 = (second_moments(run_dir / "checkpoints" / f"step_{s:08d}_universal") for s in (6, 8))
    assert v6.keys() == v8.keys() and len(v6) > 10 and all(v.abs().sum() > 0 for v in v6.values())
    beta2 = 0.999  # train.betas[1], the recipe's default
    below = {n: int((v8[n] < beta2**2 * v6[n] * (1 - 1e-5)).sum()) for n in v6}
    assert sum(below.values()) == 0, {n: k for n, k in below.items() if k}


def second_moments(universal: Path) -> dict[str, torch.Tensor]:
    """AdamW's exp_avg_sq of every parameter of a universal checkpoint (one folder per parameter)."""
    saved = {f.parent.name: torch.load(f, weights_only=False) for f in (universal / "zero").glob("*/exp_avg_sq.pt")}
    return {name: (x["param"] if isinstance(x, dict) else x).float() for name, x in saved.items()}


def _dump_launcher():
    spec = importlib.util.spec_from_file_location("dump_trajectories", ROOT / "launchers" / "dump_trajectories.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_offline_trajectories_from_the_dump_launcher_train_at_zero_stage_0_with_a_grad_norm(tmp_path):
    from ard_scale.models.teachers import build_teacher

    teacher = tmp_path / "teacher"
    build_teacher("dit", "debug", seed=0, num_embeds_ada_norm=10).model.save_pretrained(teacher)
    dump = tmp_path / "dump"
    recipe = str(ROOT / "recipes" / "tiny_cpu.yaml")
    argv = [recipe, "--teacher", str(teacher), "--out", str(dump), "--num-samples", "12", "--chunk-size", "8",
            "--batch-size", "6", "--device", "cpu"]  # fmt: skip
    assert _dump_launcher()(argv) == {"written": 12, "skipped": 0}  # steps, substeps, guidance from the recipe
    run_dir = tmp_path / "offline"
    train(run_dir, "train.trajectory_source=offline", f"data.trajectory_path={dump}", "data.path=null",
          "zero.stage=0", "train.max_steps=4")  # fmt: skip
    logged = metrics(run_dir)
    assert [m["teacher_batches"] for m in logged] == [0, 0, 0, 0]  # the teacher never ran
    assert all(isinstance(m["grad_norm"], float) and m["grad_norm"] > 0 for m in logged)  # a number at stage 0 too
    assert all(math.isfinite(m["loss"]) for m in logged) and logged[-1]["samples_seen"] == 16
