"""Per-rank model-state memory of a full ARD student + separate frozen teacher vs a LoRA student sharing the
teacher's weights, measured side by side in one 2-rank ZeRO-3 run (real DeepSpeed, gloo, CPU, fp32).

    python bench/memory.py --json out.json [--width 256] [--depth 8] [--rank 8]

Each variant builds its engines exactly as the trainer does (ard_scale.distributed.engines), takes one optimizer
step on random states, and counts every tensor storage the engines hold on rank 0 — parameter partitions of every
model (student, teacher), gradient partitions, fp32 master partitions and Adam moments — once each, however many
views point at it. Variants: `full` (trainable full student + frozen ZeRO-3 teacher engine), `lora_separate` (LoRA
student + its own frozen teacher copy) and `lora_shared` (LoRA student holding the teacher's weights, no second
copy). JSON keys: per-variant bytes by kind, `lora_shared_over_full` and `lora_shared_over_lora_separate`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("full", "lora_separate", "lora_shared")


def _storages(tensors) -> dict[int, int]:
    out = {}
    for t in tensors:
        if t is not None and t.numel() > 0:
            s = t.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
    return out


def model_state_bytes(engines) -> dict[str, int]:
    """Bytes of the distinct storages `engines` hold on this rank, by kind (each storage counted once, in the first
    kind that names it: parameters, then gradients, then optimizer state)."""
    params, grads, optim = [], [], []
    for engine in engines:
        for p in engine.module.parameters():
            params.append(p.ds_tensor if hasattr(p, "ds_tensor") else p.data)
            grads.append(p.grad)
        opt = getattr(engine, "optimizer", None)
        if opt is None:
            continue
        grads.append(getattr(opt, "grad_partitions_flat_buffer", None))
        optim.extend(getattr(opt, "fp32_partitioned_groups_flat", []))
        inner = getattr(opt, "optimizer", opt)  # the frozen engine's "optimizer" is its parameter offloader
        for state in getattr(inner, "state", {}).values():
            optim.extend(v for v in state.values() if hasattr(v, "untyped_storage") and v.dim() > 0)
    seen: dict[int, int] = {}
    out = {}
    for kind, tensors in (("parameters", params), ("gradients", grads), ("optimizer", optim)):
        new = {k: v for k, v in _storages(tensors).items() if k not in seen}
        seen.update(new)
        out[kind] = sum(new.values())
    out["total"] = sum(out.values())
    return out


def _variant(name: str, width: int, depth: int, rank: int) -> dict[str, int]:
    import torch

    from ard_scale.config.ard import ARDConfig, LoRAConfig
    from ard_scale.diffusion.condition import Condition
    from ard_scale.diffusion.schedules import VPSchedule
    from ard_scale.distributed.engines import (
        build_frozen_engine,
        build_student_engine,
        frozen_ds_config,
        student_ds_config,
    )
    from ard_scale.models.families import get_family
    from ard_scale.models.student import ARDStudent
    from ard_scale.models.teachers import build_teacher

    torch.manual_seed(0)
    spec = get_family("dit")
    teacher = build_teacher("dit", "debug", num_layers=depth, **spec.width_overrides(width))
    lora = LoRAConfig(rank=rank if name != "full" else 0, share_teacher=name == "lora_shared")
    student = ARDStudent(teacher, ARDConfig(num_steps=4, num_causal_layers=2, lora=lora), VPSchedule())
    engine, _ = build_student_engine(student, student_ds_config(micro_batch=2, zero_stage=3))
    engines = [engine]
    if not student.shares_teacher:
        engines.append(build_frozen_engine(teacher, frozen_ds_config(micro_batch=2)))
    states = torch.randn(2, 4, teacher.in_channels, 8, 8)
    loss = engine(states, Condition(labels=torch.tensor([1, 2]))).square().mean()
    engine.backward(loss)
    engine.step()
    return model_state_bytes(engines)


def worker(args) -> None:
    import torch

    from ard_scale.distributed.engines import finish_process, init_distributed

    torch.set_num_threads(1)
    rank, _ = init_distributed()
    results = {name: _variant(name, args.width, args.depth, args.rank) for name in VARIANTS}
    if rank == 0:
        Path(args.worker_out).write_text(json.dumps(results))
    finish_process(0)  # no interpreter finalisation while DeepSpeed's gloo groups are alive


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--width", type=int, default=256, help="transformer width (heads of 32)")
    parser.add_argument("--depth", type=int, default=8, help="transformer blocks")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_out:
        worker(args)
        return {}

    import tempfile

    from ard_scale.utils.launch import torchrun

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "memory.json")
        extra = ["--width", str(args.width), "--depth", str(args.depth), "--rank", str(args.rank)]
        proc = torchrun(2, __file__, "--worker-out", out, *extra)
        if proc.returncode != 0:
            sys.exit(f"bench/memory.py: the 2-rank run failed:\n{proc.stderr[-3000:]}")
        per_variant = json.loads(Path(out).read_text())
    result = {
        "config": {
            "family": "dit",
            "width": args.width,
            "depth": args.depth,
            "lora_rank": args.rank,
            "ranks": 2,
            "zero_stage": 3,
            "precision": "fp32",
            "S": 4,
        },  # fmt: skip
        "bytes_per_rank": per_variant,
        "lora_shared_over_full": per_variant["lora_shared"]["total"] / per_variant["full"]["total"],
        "lora_shared_over_lora_separate": per_variant["lora_shared"]["total"] / per_variant["lora_separate"]["total"],
    }
    for name in VARIANTS:
        b = per_variant[name]
        print(f"{name:14s} " + "  ".join(f"{k} {v / 2**20:8.2f} MiB" for k, v in b.items()))
    print(f"lora_shared / full = {result['lora_shared_over_full']:.3f}   "
          f"lora_shared / lora_separate = {result['lora_shared_over_lora_separate']:.3f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
