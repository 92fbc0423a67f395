"""The metrics a training step returns for metrics.jsonl, from a real one-process DeepSpeed run of the tiny recipe.

`lr` is the learning rate the step's update ran at, in the regression and the GAN step. DeepSpeed advances the LR
schedule inside `engine.step()`, and the steps read it afterwards, so each record showed the next step's: under a
warm-up the first steps, which do not move the weights (lr 0, see `ard_scale.trainer.build.ds_scheduler`), were
logged as already warming up."""

import pytest
from one_process import run_child

CHILD = """
import json, sys, tempfile
import torch
from ard_scale.config import load_config
from ard_scale.distributed.engines import init_distributed
from ard_scale.trainer.build import build_run
from ard_scale.trainer.gan import build_gan, gan_step
from ard_scale.trainer.step import regression_step
from ard_scale.trainer.loop import quiet_library_warnings

torch.set_num_threads(1)
init_distributed()
quiet_library_warnings()  # as train() does first
import logging
from deepspeed.utils import logger as ds_logger
said = []  # what DeepSpeed logs at WARNING and above while the runs are built and step
handler = logging.Handler(level=logging.WARNING)
handler.emit = lambda record: said.append(record.getMessage())
ds_logger.addHandler(handler)
overrides = [f"checkpoint.run_dir={tempfile.mkdtemp()}", "zero.stage=0", "zero.teacher_stage=0", "train.max_steps=10",
             "train.warmup_steps=4", "data.batch_size=1", "diffusion.substeps=1"]
out = {}
for stage in ("regression", "gan"):
    gan_overrides = ["gan.enabled=true", "gan.warmup_steps=1"] if stage == "gan" else []
    cfg = load_config("recipes/tiny_cpu.yaml", overrides + gan_overrides)
    run = build_run(cfg, 0, 1)
    gan = build_gan(run, cfg.gan, seed=cfg.train.seed, grad_clip=cfg.train.grad_clip) if cfg.gan.enabled else None
    batches, out[stage] = iter(run.loader), []
    for step in range(3):
        before = [p.detach().clone() for p in run.student.parameters()]
        batch = next(batches)
        metrics = gan_step(run, gan, batch, step) if gan else regression_step(run, [batch], step)
        moved = any(not torch.equal(a, p) for a, p in zip(before, run.student.parameters()))
        out[stage].append({"lr": metrics["lr"], "moved": moved})
out["warnings"] = said
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def steps():
    return run_child(CHILD)


def test_deepspeeds_schedule_does_not_warn_it_has_not_started(steps):
    """Each LR schedule asks itself for a rate as DeepSpeed builds it, which logged "Attempting to get learning rate
    from scheduler before it has started" on every rank of every run with a warm-up (quiet_library_warnings)."""
    assert not [w for w in steps["warnings"] if "learning rate" in w]


@pytest.mark.parametrize("stage", ["regression", "gan"])
def test_the_logged_lr_is_the_one_the_steps_update_ran_at(steps, stage):
    # warm-up over 4 steps from 0 (ds_scheduler's closed form, n = steps done: 0, 0, lr·1/4)
    assert [s["lr"] for s in steps[stage]] == pytest.approx([0.0, 0.0, 1e-3 / 4], rel=1e-12, abs=0)
    # a step logged at lr 0 left the weights as they were
    assert [s["moved"] for s in steps[stage]] == [False, False, True]


NAN_MICRO_BATCH = """
import json, math, tempfile
import torch
from ard_scale.config import load_config
from ard_scale.distributed.engines import init_distributed
from ard_scale.trainer.build import build_run
from ard_scale.trainer.step import regression_step
from ard_scale.trainer.loop import quiet_library_warnings

torch.set_num_threads(1)
init_distributed()
quiet_library_warnings()
overrides = [f"checkpoint.run_dir={tempfile.mkdtemp()}", "zero.stage=0", "zero.teacher_stage=0", "train.max_steps=10",
             "train.warmup_steps=0", "train.lr_schedule=constant", "train.grad_accum=2", "data.batch_size=1",
             "diffusion.substeps=1"]
run = build_run(load_config("recipes/tiny_cpu.yaml", overrides), 0, 1)
loss_fn, calls = run.loss_fn, []

def second_is_nan(engine, states, cond):  # the step's second micro-batch: a NaN loss (an fp overflow, a bad sample)
    loss, per_step = loss_fn(engine, states, cond)
    calls.append(len(calls))
    return (loss * float("nan"), per_step) if len(calls) == 2 else (loss, per_step)

run.loss_fn = second_is_nan
batches = iter(run.loader)
micro_batches = [next(batches), next(batches)]
before = [p.detach().clone() for p in run.student.parameters()]
metrics = regression_step(run, micro_batches, 0)
after = list(run.student.parameters())
print("RESULT " + json.dumps({
    "calls": len(calls),
    "nan": metrics["nan"],
    "grad_norm_finite": metrics["grad_norm"] is not None and math.isfinite(metrics["grad_norm"]),
    "moved": any(not torch.equal(a, p) for a, p in zip(before, after)),
    "weights_finite": all(bool(torch.isfinite(p).all()) for p in after),
}), flush=True)
"""


def test_a_nan_micro_batch_is_left_out_and_the_step_trains_on_the_others_and_counts_as_nan():
    """grad_accum=2, the second micro-batch's loss NaN: no backward of it (its NaN would reach every gradient and the
    whole update would be dropped), an update from the finite one, and the step still flagged `nan` (counted in
    nan_skips, and towards train.max_consecutive_nan)."""
    got = run_child(NAN_MICRO_BATCH)
    assert got == {"calls": 2, "nan": True, "grad_norm_finite": True, "moved": True, "weights_finite": True}
