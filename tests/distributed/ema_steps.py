"""Run by torchrun from test_ema.py: a ZeroEMA of a DeepSpeed student engine (each ZeRO stage given on the command
line, in turn) next to a plain-tensor EMA of the gathered parameters, a per-rank save/load round trip, and
`swapped_in` against a plain (unpartitioned) student loaded with the EMA weights. Each rank writes what it measured
as JSON (OUT.stage<s>.rank<r>.json).

ZeRO-3 keeps parameters below `stage3_param_persistence_threshold` gathered between steps; the threshold is set so
the debug model has both kinds (biases and norms persistent, matrices partitioned)."""

import copy
import json
import sys

import torch

from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.distributed.ema import ZeroEMA
from ard_scale.distributed.engines import build_student_engine, finish_process, init_distributed, student_ds_config
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher

S, MICRO, DECAY = 4, 2, 0.8


def gathered(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 copies of every parameter (read-only gather under ZeRO-3)."""
    import deepspeed

    params = dict(module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        return {n: p.detach().float().clone() for n, p in params.items()}


def num_gathered(module: torch.nn.Module) -> int:
    """Parameters ZeRO-3 holds gathered right now (0 without ZeRO-3)."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return sum(getattr(p, "ds_status", None) == ZeroParamStatus.AVAILABLE for p in module.parameters())


def batch(seed: int) -> tuple[torch.Tensor, Condition, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(MICRO, S, 4, 8, 8, generator=g)
    return (
        states,
        Condition(labels=torch.randint(0, 10, (MICRO,), generator=g)),
        torch.randn(MICRO, S, 8, 8, 8, generator=g),
    )


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a.keys() ^ b.keys()))[:5]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def ema_report(stage: int, rank: int, out_path: str) -> dict:
    torch.manual_seed(0)
    teacher = build_teacher("dit", "debug", seed=1)
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule())
    plain = copy.deepcopy(student).eval()  # never partitioned: the reference that loads full state dicts

    config = student_ds_config(micro_batch=MICRO, lr=1e-2, zero_stage=stage)
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 100
    config["zero_optimization"]["reduce_bucket_size"] = 10**6  # the default 5e8-element buckets are slow on CPU
    engine, _ = build_student_engine(student, config)
    ema = ZeroEMA(engine, DECAY)
    report = {"zero3": ema.zero3}
    if stage == 3:
        persistent = sum(p.ds_persist for p in student.parameters())
        report["persistent"], report["partitioned"] = persistent, len(list(student.parameters())) - persistent

    # -- update: the same parameter sequence, EMA'd as plain full tensors ------------------------------------------
    reference = gathered(student)
    for step in range(4):
        states, cond, target = batch(1000 * step + rank)
        loss = torch.nn.functional.mse_loss(engine(states, cond), target)
        engine.backward(loss)
        engine.step()
        ema.update()
        for name, p in gathered(student).items():
            reference[name] = DECAY * reference[name] + (1 - DECAY) * p
    full = ema.full_state_dict()
    report["full_keys_match_module"] = sorted(full) == sorted(plain.state_dict())
    report["full_vs_reference"] = max_diff(full, reference)
    report["ema_vs_raw"] = max_diff(full, gathered(student))  # the EMA really lags the weights
    report["num_updates"] = ema.num_updates

    # -- per-rank save / load round trip --------------------------------------------------------------------------
    path = f"{out_path}.rank{rank}.pt"
    torch.save(ema.state_dict(), path)
    fresh = ZeroEMA(engine, DECAY)  # starts from the raw weights
    fresh.load_state_dict(torch.load(path))
    report["reloaded_vs_saved"] = max_diff(fresh.full_state_dict(), full)
    report["reloaded_num_updates"] = fresh.num_updates
    # A full state dict sliced back into partitions gives this rank's shards exactly.
    regathered = ZeroEMA(engine, DECAY)
    regathered.load_full_state_dict(full)
    report["from_full_vs_shards"] = max_diff(regathered.state_dict()["shadow"], ema.state_dict()["shadow"])

    # -- swapped_in: the partitioned module with EMA weights == a plain module loaded with them -------------------
    states, cond, _ = batch(99)  # the same input on every rank
    student.eval()
    with torch.no_grad():
        # A gather (GatheredParameters) re-partitions even persistent parameters, a forward gathers them again: each
        # forward comes after the gathers so that the swap is entered and left with parameters gathered by ZeRO-3.
        raw_params = gathered(student)
        raw_before = student(states, cond)
        report["gathered_at_swap"] = num_gathered(student)
        with ema.swapped_in(engine) as swapped:
            assert swapped is student
            params_inside = gathered(student)
            ema_out = student(states, cond)
            report["gathered_at_restore"] = num_gathered(student)
        raw_after = student(states, cond)
        plain.load_state_dict(full, strict=True)
        plain_ema_out = plain(states, cond)
    report["swapped_params_vs_full"] = max_diff(params_inside, full)
    report["swapped_out_vs_plain"] = (ema_out - plain_ema_out).abs().max().item()
    report["swapped_out_vs_raw"] = (ema_out - raw_before).abs().max().item()
    report["raw_out_restored"] = (raw_after - raw_before).abs().max().item()
    report["raw_params_restored"] = max_diff(gathered(student), raw_params)

    # -- training goes on after a swap: the next step and update still match the plain reference ------------------
    student.train()
    states, cond, target = batch(5000 + rank)
    engine.backward(torch.nn.functional.mse_loss(engine(states, cond), target))
    engine.step()
    ema.update()
    for name, p in gathered(student).items():
        reference[name] = DECAY * reference[name] + (1 - DECAY) * p
    report["after_swap_full_vs_reference"] = max_diff(ema.full_state_dict(), reference)

    return report


def main(out_path: str, *stages: int) -> None:
    """One report per ZeRO stage, in turn in this process (a fresh student and engine each): OUT.stageN.rankR.json."""
    rank, _ = init_distributed()
    for stage in stages:
        report = ema_report(stage, rank, f"{out_path}.stage{stage}")
        with open(f"{out_path}.stage{stage}.rank{rank}.json", "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
    finish_process()  # no SIGABRT in finalisation from a live gloo group (engines.finish_process)
