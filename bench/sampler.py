"""Wall time of ARD S-step sampling: KV cache vs recomputing the history each step, and vs the N=0 baseline.

    python bench/sampler.py --json out.json

CPU-sized DiT-family student whose N/depth ratio is 6/28 (DiT-XL/2's). The three variants run alternately, round
after round, in one process, and the medians are compared, so machine noise hits all of them alike.
Keys: `kv_cache_speedup` (recompute / cached), `cached_over_baseline` (cached / N=0).
Runs on CUDA when available (`--device cuda`), else on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.config.ard import ARDConfig  # noqa: E402
from ard_scale.diffusion.condition import Condition  # noqa: E402
from ard_scale.diffusion.schedules import VPSchedule  # noqa: E402
from ard_scale.models.student import ARDStudent  # noqa: E402
from ard_scale.models.teachers import build_teacher  # noqa: E402


@torch.no_grad()
def sample_recompute(student: ARDStudent, noise: torch.Tensor, cond: Condition) -> torch.Tensor:
    """S steps without a cache: step g re-runs the whole history x_τS … x_τ(S-g) through every block."""
    states = [noise]
    for g in range(student.num_steps):
        out = student(torch.stack(states, 1), cond, prefix=True)[:, g]
        states.append(student.next_state(states[-1], out, g))
    return states[-1]


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=128, help="hidden size (heads of 32)")
    parser.add_argument("--latent", type=int, default=16, help="latent side; L = (side/2)^2 tokens per state")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    teacher = build_teacher(
        "dit",
        "debug",
        num_layers=28,
        num_attention_heads=args.width // 32,
        attention_head_dim=32,
        sample_size=args.latent,
    ).to(device)
    schedule = VPSchedule()
    ard = ARDStudent(teacher, ARDConfig(num_steps=4, num_causal_layers=6), schedule).to(device).eval()
    base = ARDStudent(teacher, ARDConfig(num_steps=4, num_causal_layers=0), schedule).to(device).eval()
    noise = torch.randn(args.batch, 4, args.latent, args.latent, device=device)
    cond = Condition(labels=torch.arange(args.batch, device=device) % 10)

    torch.testing.assert_close(sample_recompute(ard, noise, cond), ard.sample(noise, cond), rtol=1e-4, atol=1e-4)
    variants = {
        "cached": lambda: ard.sample(noise, cond),
        "recompute": lambda: sample_recompute(ard, noise, cond),
        "baseline_n0": lambda: base.sample(noise, cond),
    }
    for fn in variants.values():  # warm-up
        fn()
    times = {k: [] for k in variants}
    order = list(variants)
    for r in range(args.rounds):  # rotate the order so no variant always runs first (caches, clocks, neighbours)
        for name in order[r % 3 :] + order[: r % 3]:
            times[name].append(timed(variants[name], device))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "device": str(device),
        "config": {
            "depth": 28,
            "N": 6,
            "S": 4,
            "width": args.width,
            "tokens_per_state": (args.latent // 2) ** 2,
            "batch": args.batch,
            "rounds": args.rounds,
        },
        "median_s": med,
        "kv_cache_speedup": med["recompute"] / med["cached"],
        "cached_over_baseline": med["cached"] / med["baseline_n0"],
    }
    print(f"{'variant':<14}{'median s':>10}")
    for k, v in med.items():
        print(f"{k:<14}{v:>10.4f}")
    print(f"kv_cache_speedup (recompute / cached)   {result['kv_cache_speedup']:.3f}")
    print(f"cached_over_baseline (cached / N=0)     {result['cached_over_baseline']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
