"""One ARD regression step: teacher trajectory on the fly, student update (DESIGN.md §1 "Regression loss (R)")."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
import torch.distributed as dist

from ard_scale.diffusion.trajectory import teacher_trajectory
from ard_scale.distributed.engines import gather_once
from ard_scale.models.condition import Condition
from ard_scale.trainer.build import Run


def sample_seeds(run: Run, step: int, batch_size: int) -> list[int]:
    """Noise seeds keyed on the training position (global step, rank, index): a resumed run draws the same noise,
    and no two samples of a run share one."""
    first = (step * run.world_size + run.rank) * batch_size
    return [run.cfg.train.seed * 2**40 + first + i for i in range(batch_size)]


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any rank, so every rank takes the same branch."""
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def teacher_states(run: Run, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, Condition]:
    """The batch's teacher trajectory states (B, S+1, C, H, W) and its condition.

    `train.trajectory_source: online` runs the teacher's ODE here on every step."""
    cfg, d = run.cfg, run.cfg.diffusion
    cond, null = run.conditioner(batch)
    seeds = sample_seeds(run, step, cond.batch_size)
    gather = (lambda: gather_once(run.teacher_engine)) if cfg.zero.gather_teacher_once else contextlib.nullcontext
    traj = teacher_trajectory(
        run.teacher_engine,
        run.schedule,
        cond,
        latent_shape=run.latent_shape,
        seeds=seeds,
        null_cond=null if d.guidance_scale != 1 else None,
        guidance_scale=d.guidance_scale,
        num_student_steps=cfg.student.num_steps,
        substeps=d.substeps,
        solver=d.solver,
        record=d.record,
        guided_channels=d.guide_first_channels,
        gather=gather,
    )
    return traj.states, cond


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over all ranks."""
    t = t.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def regression_step(run: Run, batch: dict[str, Any], step: int) -> dict[str, Any]:
    """Generate the batch's teacher trajectories, then one student update. Returns this step's metrics."""
    t0 = time.perf_counter()
    states, cond = teacher_states(run, batch, step)
    t1 = time.perf_counter()
    loss, per_step = run.loss_fn(run.engine, states, cond)
    nan = any_rank(not torch.isfinite(loss).item())
    if not nan:
        run.engine.backward(loss)
        run.engine.step()
    t2 = time.perf_counter()

    grad_norm = run.engine.get_global_grad_norm() if not nan else None
    return {
        "step": step + 1,
        "loss": mean_over_ranks(loss).item(),
        "loss_per_step": mean_over_ranks(per_step).tolist(),
        "lr": run.engine.get_lr()[0],
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "teacher_s": t1 - t0,
        "student_s": t2 - t1,
        "nan": nan,
    }
