"""Run by torchrun from test_checkpoint.py: a tiny ARD student (ZeRO-3 engine, AdamW, WarmupLR) regressed onto fixed
per-step random targets, with CheckpointManager saves and resumes. Appends {"step", "loss"} lines to OUT as it goes
(so a run that is killed still reports its steps).

Data for step t is keyed on (t, global sample index), so the global batch is the same on any number of ranks; each
rank also adds a little noise from its *global* torch RNG, which only a restored rank_state reproduces.
"""

import argparse
import json
import os
import signal

import torch

from ard_scale.checkpoint.manager import CheckpointManager, CheckpointSaveError
from ard_scale.config import load_config, to_dict
from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.distributed.engines import build_student_engine, finish_process, init_distributed, student_ds_config
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher

GLOBAL_BATCH, S, C, SIDE = 4, 4, 4, 8
RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "tiny_cpu.yaml")


def batch(step: int, rank: int, micro: int):
    states, targets, labels = [], [], []
    for i in range(rank * micro, (rank + 1) * micro):
        g = torch.Generator().manual_seed(1_000_003 * step + i)
        states.append(torch.randn(S, C, SIDE, SIDE, generator=g))
        targets.append(torch.randn(S, C, SIDE, SIDE, generator=g))
        labels.append(int(torch.randint(0, 10, (), generator=g)))
    states = torch.stack(states) + 1e-4 * torch.randn(micro, S, C, SIDE, SIDE)  # the rank's global RNG
    return states, torch.stack(targets), Condition(labels=torch.tensor(labels))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True, help="train up to this global step")
    p.add_argument("--save-at", type=int, nargs="*", default=[], help="steps after which to save")
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-rank1-at", type=int, default=0, help="rank 1 SIGKILLs itself inside this step's save")
    p.add_argument("--sample-out", default=None, help="after training, write student.sample() for fixed noise")
    p.add_argument("--save-errors", default=None, help="a failed save: write it to SAVE_ERRORS.rankR, exit 3")
    args = p.parse_args()

    rank, world = init_distributed()
    micro = GLOBAL_BATCH // world
    torch.manual_seed(0)
    teacher = build_teacher("dit", "debug", seed=1)
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule())
    torch.manual_seed(1000 + rank)  # per-rank global RNG, saved in rank_state

    mgr = CheckpointManager(args.run_dir, keep_last=args.keep_last, config_dict=to_dict(load_config(RECIPE)))
    ds_config = student_ds_config(micro_batch=micro, lr=1e-3, grad_clip=1.0)
    ds_config["scheduler"] = {
        "type": "WarmupLR",
        "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_num_steps": 4, "warmup_type": "linear"},
    }
    engine, _ = build_student_engine(student, mgr.resume_ds_config(ds_config))

    start = 0
    if args.resume:
        client, rank_state = mgr.load_latest(engine)
        start = client["step"]
        if rank_state is not None:
            assert rank_state["cursor"] == start * micro
            torch.set_rng_state(rank_state["rng"])
    if args.kill_rank1_at and rank == 1:
        original = mgr._write_rank_state

        def crash(tag_dir, r, state):  # after engine.save_checkpoint, before the manager's barrier
            if step == args.kill_rank1_at:
                os.kill(os.getpid(), signal.SIGKILL)
            original(tag_dir, r, state)

        mgr._write_rank_state = crash

    for step in range(start + 1, args.steps + 1):
        states, targets, cond = batch(step, rank, micro)
        out = engine(states, cond)[:, :, :C]
        loss = ((out - targets) ** 2).mean()
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        torch.distributed.all_reduce(mean)
        if rank == 0:
            with open(args.out, "a") as f:
                f.write(json.dumps({"step": step, "loss": mean.item() / world, "world": world}) + "\n")
        if step in args.save_at:
            client = {"step": step, "samples_seen": step * GLOBAL_BATCH}
            try:
                mgr.save(engine, step, client, {"rng": torch.get_rng_state(), "cursor": step * micro})
            except CheckpointSaveError as e:
                if args.save_errors is None:
                    raise
                with open(f"{args.save_errors}.rank{rank}", "w") as f:
                    json.dump({"message": str(e), "every_rank": e.every_rank}, f)
                finish_process(3)

    if args.sample_out:
        noise = torch.randn(3, C, SIDE, SIDE, generator=torch.Generator().manual_seed(7))
        labels = torch.tensor([1, 2, 3])
        engine.module.eval()
        x = engine.module.sample(noise, Condition(labels=labels))  # collective under ZeRO-3
        if rank == 0:
            torch.save({"noise": noise, "labels": labels, "out": x}, args.sample_out)


if __name__ == "__main__":
    main()
    finish_process()  # no SIGABRT in finalisation from a live gloo group (engines.finish_process)
