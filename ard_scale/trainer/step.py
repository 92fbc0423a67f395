"""One ARD regression step: teacher trajectory on the fly, student update (DESIGN.md §1 "Regression loss (R)")."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.distributed as dist

from ard_scale.diffusion.condition import Condition
from ard_scale.distributed.collectives import any_rank
from ard_scale.distributed.engines import step_student
from ard_scale.trainer.build import Run

__all__ = ["any_rank", "mean_over_ranks", "regression_step", "teacher_states"]


def teacher_states(run: Run, batch: dict[str, Any], step: int, micro: int = 0) -> tuple[torch.Tensor, Condition]:
    """The batch's teacher trajectory states (B, S+1, C, H, W) and its condition, from `train.trajectory_source`
    (online, replay or offline: ard_scale/trainer/trajectories.py). `micro`: the micro-batch within the step."""
    return run.trajectories(batch, step, micro)


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over all ranks."""
    t = t.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def regression_step(run: Run, micro_batches: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """One optimizer step over `train.grad_accum` micro-batches: each gets its teacher trajectories and a backward
    (DeepSpeed scales each loss by 1/grad_accum), then one engine.step(). Returns this step's metrics.

    A micro-batch whose loss is non-finite on any rank is left out (no backward) on every rank; the update uses the
    others (still scaled by 1/grad_accum) and is skipped when none is finite. The step then counts as `nan`."""
    teacher_s = student_s = 0.0
    solved_before = run.trajectories.num_solved
    losses, per_steps, finite = [], [], 0
    for micro, batch in enumerate(micro_batches):
        t0 = time.perf_counter()
        states, cond = teacher_states(run, batch, step, micro)
        t1 = time.perf_counter()
        loss, per_step = run.loss_fn(run.engine, states, cond)
        if not any_rank(not torch.isfinite(loss).item()):
            run.engine.backward(loss)
            finite += 1
        losses.append(loss.detach())
        per_steps.append(per_step.detach())
        teacher_s, student_s = teacher_s + t1 - t0, student_s + time.perf_counter() - t1
    t1 = time.perf_counter()
    grad_norm, lr = None, run.engine.get_lr()[0]  # the step's own: engine.step() advances the LR schedule
    if finite:
        grad_norm = step_student(run.engine)  # a non-finite gradient is never stepped
    student_s += time.perf_counter() - t1
    return {
        "step": step + 1,
        "loss": mean_over_ranks(torch.stack(losses).mean()).item(),
        "loss_per_step": mean_over_ranks(torch.stack(per_steps).mean(0)).tolist(),
        "lr": lr,
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "teacher_s": teacher_s,
        "student_s": student_s,
        "teacher_batches": run.trajectories.num_solved - solved_before,
        "nan": finite < len(micro_batches) or not math.isfinite(grad_norm),  # skipped: a NaN/Inf loss or gradient
    }
