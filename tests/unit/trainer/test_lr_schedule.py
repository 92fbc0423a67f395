"""`train.lr_schedule` × `train.warmup_steps` as DeepSpeed runs them: the dict `ds_scheduler` returns, built into
DeepSpeed's own scheduler class over a real torch optimizer, gives the closed forms the schema documents (linear
warm-up from 0, decay to 0 at max_steps). DeepSpeed's defaults would warm up logarithmically and end the cosine at
1e-4·lr."""

import math
from pathlib import Path

import pytest
import torch
from deepspeed.runtime import lr_schedules

from ard_scale.config import load_config
from ard_scale.trainer.build import ds_scheduler

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "tiny_cpu.yaml"
LR, T = 1e-3, 20


def lrs_run(schedule: str, warmup: int) -> list[float]:
    """lr of each update: index n = optimizer steps already done (0 … T-1), plus n = T after the last step."""
    cfg = load_config(RECIPE, [f"train.lr={LR}", f"train.max_steps={T}", f"train.lr_schedule={schedule}",
                               f"train.warmup_steps={warmup}"])  # fmt: skip
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)  # DeepSpeed's optimizer starts at train.lr
    spec = ds_scheduler(cfg)
    sched = getattr(lr_schedules, spec["type"])(opt, **spec["params"]) if spec else None
    out = []
    for _ in range(T + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # what engine.step() does: the optimizer, then the scheduler
        if sched is not None:
            sched.step()
    return out


def closed_form(schedule: str, warmup: int, n: int) -> float:
    """The schema's schedule in DeepSpeed's indexing (see ds_scheduler): i = n - 1 is the scheduler's last step."""
    if schedule == "constant" and warmup == 0:
        return LR
    w = max(warmup, 2)
    i = n - 1
    if i < w:  # warm-up from 0; n = 0 runs at DeepSpeed's start value, 0
        return LR * max(i, 0) / w
    if schedule == "constant":
        return LR
    if schedule == "linear":
        return LR * (T - 1 - i) / (T - 1 - w)
    return LR * (1 + math.cos(math.pi * (i - w + 1) / (T - w))) / 2


CASES = [("constant", 0), ("constant", 5), ("linear", 5), ("cosine", 5), ("linear", 0), ("cosine", 0)]


@pytest.mark.parametrize(("schedule", "warmup"), CASES)
def test_lr_follows_the_documented_closed_form(schedule, warmup):
    got = lrs_run(schedule, warmup)
    w = max(warmup, 2)
    end_of_warmup, mid_decay, last = w + 1, (w + 1 + T) // 2, T - 1
    for n in (0, end_of_warmup, mid_decay, last, T):
        assert got[n] == pytest.approx(closed_form(schedule, warmup, n), rel=1e-12, abs=1e-15), (n, got)
    assert got == pytest.approx([closed_form(schedule, warmup, n) for n in range(T + 1)], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decays_reach_zero_at_max_steps_and_warm_up_linearly(schedule):
    got = lrs_run(schedule, 5)
    assert got[0] == 0.0 and got[T] == pytest.approx(0.0, abs=1e-15)  # not DeepSpeed's 1e-4·lr floor
    assert max(got) == pytest.approx(LR, rel=0.05)
    steps = [got[n + 1] - got[n] for n in range(1, 5)]  # warm-up increments: equal (linear), not shrinking (log)
    assert steps == pytest.approx([LR / 5] * 4, rel=1e-9)


def test_constant_without_warmup_leaves_the_optimizer_alone():
    assert lrs_run("constant", 0) == [LR] * (T + 1)
