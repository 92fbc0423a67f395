"""The student engine's step and resume, on a real one-process DeepSpeed engine (ZeRO stages 0 and 3).

`step_student`: a NaN/Inf gradient never reaches the student's weights, at every ZeRO stage and precision the
recipe allows. DeepSpeed skips such a step itself at stages 1-3 and in bf16; at stage 0 in fp32 it clipped by the NaN
norm and AdamW wrote NaN into every weight (then into every later loss, the EMA and the next checkpoint).
`reapply_optimizer_settings`: a resume trains with this run's lr, betas and weight decay, not the saved ones."""

import json

import pytest
from one_process import run_child

CHILD = """
import json, sys
import torch
from ard_scale.distributed.engines import build_student_engine, init_distributed, step_student, student_ds_config

torch.set_num_threads(1)
init_distributed()
out = {}
for stage, precision in json.loads(sys.argv[1]):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    engine, _ = build_student_engine(model, student_ds_config(micro_batch=2, zero_stage=stage, precision=precision))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(2, 8, dtype=dtype)

    def weights():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return torch.cat([p.detach().float().flatten() for p in model.parameters()])

    before = weights()
    hook = model[0].weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    engine.backward(engine(x).float().pow(2).mean())  # a finite loss whose gradient is NaN
    bad_norm = float(step_student(engine))
    hook.remove()
    after_bad = weights()
    engine.backward(engine(x).float().pow(2).mean())
    good_norm = float(step_student(engine))
    after_good = weights()
    out[f"{stage}-{precision}"] = {
        "bad_norm_finite": bad_norm == bad_norm and abs(bad_norm) != float("inf"),
        "unchanged_by_bad": bool(torch.equal(before, after_bad)),
        "good_norm": good_norm,
        "finite_after_good": bool(torch.isfinite(after_good).all()),
        "moved_by_good": not bool(torch.equal(after_bad, after_good)),
    }
print("RESULT " + json.dumps(out), flush=True)
"""

CASES = [(0, "fp32"), (0, "bf16"), (3, "fp32"), (3, "bf16")]


@pytest.fixture(scope="module")
def results():
    return run_child(CHILD, json.dumps(CASES))


@pytest.mark.parametrize("stage, precision", CASES)
def test_a_nonfinite_gradient_is_skipped_and_the_next_step_trains(results, stage, precision):
    r = results[f"{stage}-{precision}"]
    assert not r["bad_norm_finite"]  # reported, so the step counts as skipped
    assert r["unchanged_by_bad"]  # no update from it, no NaN in the weights
    assert r["good_norm"] > 0 and r["finite_after_good"] and r["moved_by_good"]  # and training goes on


RESUME_CHILD = """
import json, sys, tempfile
import torch
from ard_scale.distributed.engines import (
    build_student_engine, init_distributed, reapply_optimizer_settings, student_ds_config,
)
from ard_scale.trainer.build import ds_scheduler
from ard_scale.config import load_config

torch.set_num_threads(1)
init_distributed()
folder, out = tempfile.mkdtemp(), {}
for schedule in ("none", "cosine"):
    def engine(lr, betas, wd):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
        config = student_ds_config(micro_batch=2, lr=lr, betas=betas, weight_decay=wd)
        if schedule == "cosine":
            overrides = ["train.lr_schedule=cosine", "train.warmup_steps=2", "train.max_steps=10", f"train.lr={lr}"]
            config["scheduler"] = ds_scheduler(load_config("recipes/tiny_cpu.yaml", overrides))
        return build_student_engine(model, config)[0]

    saved = engine(1e-3, (0.9, 0.999), 0.0)
    for _ in range(3):
        saved.backward(saved(torch.randn(2, 8)).pow(2).mean())
        saved.step()
    saved.save_checkpoint(folder, tag=schedule)
    was = [(g["lr"], list(g["betas"]), g["weight_decay"]) for g in saved.optimizer.param_groups]
    result = {}
    for name, settings in (("same", (1e-3, (0.9, 0.999), 0.0)), ("changed", (1e-5, (0.5, 0.9), 0.1))):
        resumed = engine(*settings)
        resumed.load_checkpoint(folder, tag=schedule)
        reapply_optimizer_settings(resumed, lr=settings[0], betas=settings[1], weight_decay=settings[2])
        result[name] = [(g["lr"], list(g["betas"]), g["weight_decay"]) for g in resumed.optimizer.param_groups]
    out[schedule] = {"saved": was, **result}
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def resumed_settings():
    return run_child(RESUME_CHILD)


@pytest.mark.parametrize("schedule", ["none", "cosine"])
def test_a_resume_takes_this_runs_optimizer_settings_and_an_unchanged_one_its_saved_values(resumed_settings, schedule):
    r = resumed_settings[schedule]
    assert r["same"] == r["saved"]  # bit for bit: the resume of an unchanged recipe is exact
    (lr, betas, wd), (saved_lr, _, _) = r["changed"][0], r["saved"][0]
    assert betas == [0.5, 0.9] and wd == 0.1
    # without a schedule the new lr; with one, the schedule's value at the restored step, scaled to the new peak
    assert lr == pytest.approx(1e-5 if schedule == "none" else saved_lr * 1e-2, rel=1e-9)
