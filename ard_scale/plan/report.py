"""The plan as a table (`format_plan`), and the command line: python -m ard_scale.plan RECIPE --gpus N [...]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ard_scale.plan as plan_module
from ard_scale.config import load_config
from ard_scale.plan.budget import GB
from ard_scale.utils.cli import count, positive


def format_plan(p: dict) -> str:
    r = p["recipe"]
    lines = [
        *(f"note: {n}" for n in p["notes"]),
        f"{r['gpus']} GPUs × {r['gpu_mem_gb']:g} GB, {r['precision']}, micro batch {r['micro_batch']} × grad accum "
        f"{r['grad_accum']}, latent {tuple(r['latent'])}, {r['tokens_per_sample']} student tokens per sample, "
        f"activation checkpointing {'on' if r['activation_checkpointing'] else 'off'}, history attention "
        f"{r['history_attention']}",
        "",
        f"{'per GPU, GB':<10}{'params (M)':>12}{'ZeRO':>6}{'weights':>10}{'grads':>9}{'optim':>9}{'EMA':>9}"
        f"{'activ.':>9}",
    ]
    for name, m in p["models"].items():
        lines.append(
            f"{name:<10}{m['num_params'] / 1e6:>12.1f}{m['zero_stage']:>6}{m['params'] / GB:>10.3f}"
            f"{m['grads'] / GB:>9.3f}{m['optimizer'] / GB:>9.3f}{m['ema'] / GB:>9.3f}{m['activations'] / GB:>9.2f}"
        )
    s = p["models"]["student"]
    if s["trainable_params"] != s["num_params"]:
        lines.append(
            f"LoRA student: {s['trainable_params'] / 1e6:.1f} M trainable of {s['num_params'] / 1e6:.1f} M"
            + (
                "; the teacher's weights are the student's frozen base (held once)"
                if p["models"]["teacher"]["shared_with_student"]
                else ""
            )
        )
    lines += [
        f"student activations: {s['activations_no_checkpointing'] / GB:.2f} GB without checkpointing, "
        f"{s['activations_checkpointing'] / GB:.2f} GB with",
        "phases (transient, GB): " + ", ".join(f"{k} {v / GB:.2f}" for k, v in p["phases"].items()),
        f"peak per GPU: {p['peak_bytes'] / GB:.2f} GB = persistent {p['persistent_bytes'] / GB:.2f} + largest phase "
        f"-> {'fits' if p['fits'] else 'DOES NOT FIT'} in {r['gpu_mem_gb']:g} GB",
        f"gather-once of the teacher ({p['gather_once']['full_teacher_bytes'] / GB:.2f} GB on every rank): peak "
        f"{p['gather_once']['peak_bytes'] / GB:.2f} GB -> {'fits' if p['gather_once']['fits'] else 'DOES NOT FIT'}"
        f"{' (enabled)' if r['gather_teacher_once'] else ' (not enabled)'}",
    ]
    f = p["flops"]
    lines += [
        "",
        f"FLOPs per optimizer step per GPU ({r['trajectory_source']} trajectories):",
        f"  teacher trajectory {f['teacher_trajectory'] / 1e12:10.2f} TFLOP  ({f['teacher_forwards_per_sample']} "
        f"forwards × {f['teacher_forward_per_sample'] / 1e9:.1f} GFLOP per sample)",
        f"  student fwd+bwd    {f['student_fwd_bwd'] / 1e12:10.2f} TFLOP  "
        f"(forward {f['student_forward_per_sample'] / 1e9:.1f} GFLOP per sample)",
    ]
    if f["t5_encode"]:
        lines.append(f"  T5 encode          {f['t5_encode'] / 1e12:10.2f} TFLOP")
    if f["qwen_encode"]:
        lines.append(f"  Qwen2.5-VL encode  {f['qwen_encode'] / 1e12:10.2f} TFLOP")
    if f["gan_feature_passes"]:
        lines.append(f"  GAN feature passes {f['gan_feature_passes'] / 1e12:10.2f} TFLOP")
    lines.append(
        f"  total              {f['total'] / 1e12:10.2f} TFLOP; teacher / student = {f['teacher_over_student']:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ard_scale.plan", description=plan_module.__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.batch_size=8")
    parser.add_argument("--gpus", type=count(), required=True)
    parser.add_argument("--gpu-mem-gb", type=positive, default=80.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the plan as JSON here")
    args = parser.parse_intermixed_args(argv)  # overrides may come after the options
    if args.json is not None and not args.json.resolve().parent.is_dir():  # before planning, not after
        sys.exit(
            f"error: --json {args.json}: its folder {args.json.parent} does not exist; create it or write elsewhere"
        )
    try:
        result = plan_module.plan(load_config(args.recipe, args.overrides), args.gpus, args.gpu_mem_gb)
    except ValueError as e:  # a bad recipe (ConfigError), a GPU count, a missing size: the cause, no traceback
        sys.exit(f"error: {e}")
    print(format_plan(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
