"""Run by torchrun from test_zero3_student.py: a few ARD regression steps with a ZeRO-3 student engine and a frozen
ZeRO-3 teacher engine generating guided trajectories on the fly (gathered once per batch), for each family named on
the command line in turn (one launch for all of them), each optionally with the student's optimizer state and
parameters offloaded to CPU memory. Writes {family: losses, optimizer and offload settings} as JSON."""

import json
import sys

import torch

from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.diffusion.trajectory import teacher_trajectory
from ard_scale.distributed.engines import (
    build_frozen_engine,
    build_student_engine,
    finish_process,
    frozen_ds_config,
    gather_once,
    init_distributed,
    student_ds_config,
)
from ard_scale.losses.regression import RegressionLoss
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher

GLOBAL_BATCH, STEPS, S = 4, 6, 4


def train_steps(family: str, rank: int, world: int, offload: bool = False) -> dict:
    micro = GLOBAL_BATCH // world
    torch.manual_seed(0)
    teacher = build_teacher(family, "debug", seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # move gates and heads off their init so the teacher is not near-trivial
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    schedule = VPSchedule()
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), schedule)
    loss_fn = RegressionLoss(S)

    # One fixed global batch; each rank takes its slice.
    if family == "dit":
        cond_all = Condition(labels=torch.arange(GLOBAL_BATCH) % 10)
        null_all = teacher.null_condition(GLOBAL_BATCH)
    else:
        cond_all = Condition(text=torch.randn(GLOBAL_BATCH, 6, 24, generator=g), text_mask=torch.ones(GLOBAL_BATCH, 6))
        null_all = Condition(text=torch.zeros(GLOBAL_BATCH, 6, 24), text_mask=torch.ones(GLOBAL_BATCH, 6))
    mine = slice(rank * micro, (rank + 1) * micro)
    cond, null = cond_all[mine], null_all[mine]
    seeds = list(range(100 + rank * micro, 100 + (rank + 1) * micro))

    def states(denoise, **gather):
        return teacher_trajectory(
            denoise,
            schedule,
            cond,
            latent_shape=(4, 8, 8),
            seeds=seeds,
            null_cond=null,
            guidance_scale=1.5,
            num_student_steps=S,
            substeps=2,
            **gather,
        ).states

    reference = None
    if world == 1:  # plain PyTorch, no DeepSpeed: the first-step loss the engines must reproduce
        reference = loss_fn(student, states(teacher), cond)[0].item()

    teacher_engine = build_frozen_engine(teacher, frozen_ds_config(micro_batch=micro))
    ds_config = student_ds_config(
        micro_batch=micro, lr=1e-3, grad_clip=1.0, offload_optimizer=offload, offload_params=offload
    )
    engine, _ = build_student_engine(student, ds_config)
    losses = []
    for _ in range(STEPS):
        trajectory = states(teacher_engine, gather=lambda: gather_once(teacher_engine))
        loss, _ = loss_fn(engine, trajectory, cond)
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        torch.distributed.all_reduce(mean)
        losses.append(mean.item() / world)
    return {
        "losses": losses,
        "reference_first_loss": reference,
        "optimizer": type(engine.optimizer.optimizer).__name__,  # the one ZeRO-3 steps its fp32 partitions with
        "offload": [bool(engine.zero_offload_optimizer()), bool(engine.zero_offload_param())],
        # parameters ZeRO-3 keeps whole on every rank (under stage3_param_persistence_threshold): student, teacher
        "persistent": [sum(bool(p.ds_persist) for p in m.parameters()) for m in (engine.module, teacher_engine.module)],
        "num_params": [sum(1 for _ in m.parameters()) for m in (engine.module, teacher_engine.module)],
    }


def main(out_path: str, *runs: str) -> None:
    """`runs`: family names, each one optionally prefixed `offload:` (zero.offload_optimizer and zero.offload_params
    on), results keyed by the name as given."""
    rank, world = init_distributed()
    results = {run: train_steps(run.removeprefix("offload:"), rank, world, run.startswith("offload:")) for run in runs}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
    finish_process()  # no SIGABRT in finalisation from a live gloo group (engines.finish_process)
