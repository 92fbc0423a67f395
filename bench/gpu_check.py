"""GPU check of the ARD student at DiT-XL/2 256px: invariants 2 and 3 on CUDA, and ARD N=6 vs N=0 speed and memory.

    python bench/gpu_check.py --json gpu_check.json          # CUDA, dit_xl_2_256 (28 blocks, D=1152, L=256)
    python bench/gpu_check.py --cpu                           # CPU, a 28-block debug-width DiT (so it cannot rot)

Part of `bench/gpu_check.sh`, which also runs the DeepSpeed trainer on one GPU. Sections:
1. environment (torch, GPU, memory, package versions);
2. DESIGN.md invariant 2 (KV-cached sampling == full-sequence forward on the sampled trajectory) and invariant 3
   (N=0, `solver`, teacher-copied heads == the teacher's own S-step DDIM sampler at guidance 1), fp32, TF32 off;
3. history attention: FlexAttention (block-sparse) == SDPA with the dense mask, every mask kind, forward and
   gradients in bf16 on CUDA (forward at debug size on CPU);
4. speed, measured side by side (warm-up, then rounds in rotated order, medians): training forward+backward in
   bf16 autocast (B x S states) and KV-cached S-step sampling, ARD N=6 over the N=0 baseline, plus recomputing the
   history without a cache; absolute ms and peak memory per variant; the counted FLOP ratios for comparison.
Each section reports its own failure and the rest still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler import sample_recompute  # noqa: E402  (bench/sampler.py)

from ard_scale.config.ard import ARDConfig  # noqa: E402
from ard_scale.diffusion.condition import Condition  # noqa: E402
from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule, first_order_step  # noqa: E402
from ard_scale.models.student import ARDStudent  # noqa: E402
from ard_scale.models.teachers import build_teacher  # noqa: E402

TOLERANCE = 1e-5  # DESIGN.md invariants 2 and 3


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def peak_mem(fn, device: torch.device) -> dict:
    """Peak allocated memory of one call, absolute and above what was allocated before it (GiB)."""
    if device.type != "cuda":
        return {}
    gc.collect()
    torch.cuda.empty_cache()
    sync(device)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated()
    return {"peak_gib": peak / 2**30, "peak_above_start_gib": (peak - before) / 2**30}


def interleaved(variants: dict, device: torch.device, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per variant; every round runs all variants, the order rotated round by round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = {k: [] for k in variants}
    order = list(variants)
    for r in range(rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            times[name].append(timed(variants[name], device))
    return {k: statistics.median(v) for k, v in times.items()}


def teacher_sampler(teacher, schedule, noise, cond, num_steps):
    """The teacher's own S-step deterministic sampler on the student grid (DDIM), guidance 1 (as the unit test)."""
    grid, x, states = schedule.grid(num_steps), noise, [noise]
    for k in range(num_steps):
        out = teacher(x, schedule.model_time(grid[k]).expand(x.shape[0]), cond)
        x = first_order_step(schedule, x, grid[k], teacher.split_output(out), grid[k + 1])
        states.append(x)
    return torch.stack(states, 1)


def write_json(path: Path, result: dict) -> None:
    """Replace `path` with `result` in one step (a run killed while writing leaves the previous version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(result, indent=2, default=str))
    partial.replace(path)


class Check:
    """Sections run in turn, each reported and kept whatever the others do; with `json_path`, the JSON is rewritten
    after every section (`complete` false until the end), so a run the device's time limit stops keeps what it
    measured."""

    def __init__(self, json_path: Path | None = None):
        self.result: dict = {}
        self.failed: list[str] = []
        self.json_path = json_path

    def save(self, complete: bool = False) -> None:
        if self.json_path is not None:
            write_json(self.json_path, {**self.result, "failed_sections": self.failed, "complete": complete})

    def section(self, name: str, fn) -> None:
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            self.result[name] = fn()
        except Exception as e:  # report and go on: one device run must tell as much as it can
            traceback.print_exc()
            self.result[name] = {"error": f"{type(e).__name__}: {e}"}
            self.failed.append(name)
            print(f"!! section {name!r} FAILED: {type(e).__name__}: {str(e)[:500]}", flush=True)
        print(f"   ({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
        self.save()


def environment(device: torch.device) -> dict:
    import importlib.metadata as md

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
    }
    for pkg in ("deepspeed", "diffusers", "transformers", "huggingface-hub", "tokenizers", "numpy", "accelerate"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        env.update(
            gpu=p.name,
            capability=f"{p.major}.{p.minor}",
            sms=p.multi_processor_count,
            total_mem_gib=round(total / 2**30, 2),
            free_mem_gib=round(free / 2**30, 2),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    for k, v in env.items():
        print(f"   {k:<16} {v}")
    return env


def invariants(
    teacher, schedule, device, batch: int, num_classes: int | None, *, cond=None, side=None, causal_layers=6
) -> dict:
    """Invariants 2 and 3 in fp32 with TF32 off (class labels unless `cond` is given)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    S, side, C = 4, side or teacher.sample_size, teacher.in_channels
    g = torch.Generator(device="cpu").manual_seed(3)
    noise = torch.randn(batch, C, side, side, generator=g).to(device)
    if cond is None:
        cond = Condition(labels=(torch.arange(batch) * 7 % num_classes).to(device))
    out = {}

    ard_cfg = ARDConfig(num_steps=S, num_causal_layers=causal_layers, output="solver")
    ard = ARDStudent(teacher, ard_cfg, schedule).to(device).eval()
    with torch.no_grad():
        sampled = ard.sample(noise, cond, return_states=True)
        forced = ard.predict_next(sampled[:, :S], cond)
        out["inv2_cached_vs_full_rel_err"] = rel_err(forced, sampled[:, 1:])
        per_step = [rel_err(forced[:, s], sampled[:, s + 1]) for s in range(S)]
        out["inv2_per_step"] = per_step
        out["inv2_max_step_rel_err"] = max(per_step)
        out["inv2_final_equal"] = bool(torch.equal(ard.sample(noise, cond), sampled[:, -1]))
        out["inv2_finite"] = bool(torch.isfinite(sampled).all())
    del ard, sampled, forced

    base = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=0, output="solver"), schedule).to(device).eval()
    with torch.no_grad():
        reference = teacher_sampler(teacher, schedule, noise, cond, S)
        out["inv3_sample_vs_teacher_rel_err"] = rel_err(base.sample(noise, cond, return_states=True), reference)
        out["inv3_forced_vs_teacher_rel_err"] = rel_err(base.predict_next(reference[:, :S], cond), reference[:, 1:])
    del base
    out["inv2_pass"] = out["inv2_cached_vs_full_rel_err"] <= TOLERANCE
    out["inv3_pass"] = max(out["inv3_sample_vs_teacher_rel_err"], out["inv3_forced_vs_teacher_rel_err"]) <= TOLERANCE
    print(
        f"   invariant 2 (KV-cached sampling vs full forward, N={causal_layers}, B={batch}): rel err "
        f"{out['inv2_cached_vs_full_rel_err']:.3e} (worst step {max(per_step):.3e})  "
        f"per step {[f'{e:.2e}' for e in per_step]}  "
        f"final equal: {out['inv2_final_equal']}  -> {'PASS' if out['inv2_pass'] else 'FAIL'} (<= {TOLERANCE})"
    )
    print(
        f"   invariant 3 (N=0 untrained student vs the teacher's own S=4 sampler): sample rel err "
        f"{out['inv3_sample_vs_teacher_rel_err']:.3e}, teacher-forced rel err "
        f"{out['inv3_forced_vs_teacher_rel_err']:.3e}  -> {'PASS' if out['inv3_pass'] else 'FAIL'}"
    )
    return out


def speed(teacher, schedule, device, args, num_classes: int) -> dict:
    """ARD N=6 vs N=0: training fwd+bwd (bf16 autocast) and KV-cached sampling, interleaved rounds."""
    torch.backends.cuda.matmul.allow_tf32 = True  # bf16 autocast; fp32 leftovers as a real run would do them
    torch.backends.cudnn.allow_tf32 = True
    S, side, C = 4, teacher.sample_size, teacher.in_channels
    dtype = {"bf16": torch.bfloat16, "none": None}[args.autocast]
    students = {
        n: ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=n), schedule).to(device)
        for n in (args.causal_layers, 0)
    }
    ard_name, base_name = f"ard_n{args.causal_layers}", "baseline_n0"
    g = torch.Generator(device="cpu").manual_seed(0)
    B, Bs = args.batch, args.sample_batch
    states = torch.randn(B, S, C, side, side, generator=g).to(device)
    target = torch.randn(B, S, C, side, side, generator=g).to(device)
    cond = Condition(labels=(torch.arange(B) % num_classes).to(device))
    noise = torch.randn(Bs, C, side, side, generator=g).to(device)
    scond = Condition(labels=(torch.arange(Bs) % num_classes).to(device))

    def train_step(student):
        def run():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = (student.predict_next(states, cond).float() - target).pow(2).mean()
            loss.backward()
            student.zero_grad(set_to_none=True)

        return run

    def sample(student, recompute=False):
        def run():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                (sample_recompute(student, noise, scond) if recompute else student.sample(noise, scond))

        return run

    for st in students.values():
        st.train()
    train_variants = {ard_name: train_step(students[args.causal_layers]), base_name: train_step(students[0])}
    train_med = interleaved(train_variants, device, args.rounds, args.warmup)
    train_mem = {k: peak_mem(fn, device) for k, fn in train_variants.items()}

    for st in students.values():
        st.eval()
    sample_variants = {
        ard_name: sample(students[args.causal_layers]),
        base_name: sample(students[0]),
        f"{ard_name}_recompute": sample(students[args.causal_layers], recompute=True),
    }
    sample_med = interleaved(sample_variants, device, args.rounds, args.warmup)
    sample_mem = {k: peak_mem(fn, device) for k, fn in sample_variants.items()}

    out = {
        "config": {
            "S": S,
            "N": args.causal_layers,
            "train_batch": B,
            "sample_batch": Bs,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "autocast": args.autocast,
            "tokens_per_state": (side // teacher.patch_size) ** 2,
        },
        "train_fwd_bwd_ms": {k: 1e3 * v for k, v in train_med.items()},
        "train_peak_mem": train_mem,
        "sample_ms": {k: 1e3 * v for k, v in sample_med.items()},
        "sample_peak_mem": sample_mem,
        "train_ratio_ard_over_n0": train_med[ard_name] / train_med[base_name],
        "sample_ratio_ard_over_n0": sample_med[ard_name] / sample_med[base_name],
        "kv_cache_speedup": sample_med[f"{ard_name}_recompute"] / sample_med[ard_name],
    }
    print(f"   training fwd+bwd, autocast {args.autocast}, batch {B} x S={S} states (medians of {args.rounds} rounds):")
    for k, v in out["train_fwd_bwd_ms"].items():
        print(f"     {k:<22}{v:10.2f} ms   {train_mem.get(k, {})}")
    print(f"   KV-cached S={S}-step sampling, autocast {args.autocast}, batch {Bs}:")
    for k, v in out["sample_ms"].items():
        print(f"     {k:<22}{v:10.2f} ms   {sample_mem.get(k, {})}")
    print(f"   RATIO train  ARD N={args.causal_layers} / N=0 : {out['train_ratio_ard_over_n0']:.4f}")
    print(f"   RATIO sample ARD N={args.causal_layers} / N=0 : {out['sample_ratio_ard_over_n0']:.4f}")
    print(f"   kv_cache_speedup (recompute / cached)  : {out['kv_cache_speedup']:.3f}")
    del students, train_variants, sample_variants
    return out


def flop_ratios(size: str, overrides: dict, causal_layers: int) -> dict:
    """The counted FLOP ratios (torch's FLOP counter on meta) for the same shapes, to set beside the timings."""
    from ard_scale.models import flops as flops_mod

    if overrides:  # debug size with overrides: count directly, as student_flops would
        teacher = build_teacher("dit", size, device="meta", **overrides)
        rows, side = {}, teacher.sample_size
        cond = Condition(labels=torch.zeros(1, dtype=torch.long, device="meta"))
        noise = torch.empty(1, teacher.in_channels, side, side, device="meta")
        states = torch.empty(1, 4, teacher.in_channels, side, side, device="meta")
        for n in (0, causal_layers):
            with torch.device("meta"):
                st = ARDStudent(teacher, ARDConfig(num_steps=4, num_causal_layers=n), VPSchedule())
            sampling = flops_mod.count_flops(lambda st=st: st.sample(noise, cond))
            with torch.no_grad():
                training = flops_mod.count_flops(lambda st=st: st(states, cond))
            rows[n] = {"sampling_gflops": sampling / 1e9, "train_forward_gflops": training / 1e9}
    else:
        rows = {
            n: flops_mod.student_flops("dit", size, ARDConfig(num_steps=4, num_causal_layers=n))
            for n in (0, causal_layers)
        }
    out = {
        "sampling_flop_ratio": rows[causal_layers]["sampling_gflops"] / rows[0]["sampling_gflops"],
        "train_forward_flop_ratio": rows[causal_layers]["train_forward_gflops"] / rows[0]["train_forward_gflops"],
        "gflops": {str(k): v for k, v in rows.items()},
    }
    print(
        f"   counted FLOPs ARD N={causal_layers} / N=0: sampling {out['sampling_flop_ratio']:.4f}, "
        f"training forward {out['train_forward_flop_ratio']:.4f}"
    )
    return out


def flux_invariants(device, gpu: bool, batch: int) -> dict:
    """Invariants 2 and 3 for the FLUX family (text copy per group, joint attention, KV cache of text + image keys)
    in fp32: on a GPU at FLUX.1-dev's real layout (3072 wide, 24 heads, 512 T5 + 4096 image tokens at 1024px) with
    random weights and 2 double- + 4 single-stream blocks (fp32 teacher + student copies of all 57 blocks would need
    ~100 GB before activations); on the CPU at debug size."""
    size, overrides, side, text_tokens = (
        ("flux_1_dev", {"num_layers": 2, "num_single_layers": 4}, 128, 512) if gpu else ("debug", {}, 8, 6)
    )
    teacher = build_teacher("flux", size, device=device, **overrides)
    c = teacher.config
    g = torch.Generator(device="cpu").manual_seed(5)
    cond = Condition(
        text=torch.randn(batch, text_tokens, c.joint_attention_dim, generator=g).to(device),
        pooled=torch.randn(batch, c.pooled_projection_dim, generator=g).to(device),
        guidance=torch.full((batch,), 3.5, device=device),
    )
    tokens = f"{text_tokens} text + {(side // 2) ** 2} image tokens per group"
    print(f"   flux/{size}{overrides or ''}: depth {teacher.depth}, {tokens}")
    out = invariants(teacher, FlowSchedule(shift=3.0), device, batch, None, cond=cond, side=side, causal_layers=3)
    return {"size": size, "overrides": overrides, **out}


def flex_check(device, gpu: bool) -> dict:
    """History attention with FlexAttention (block-sparse) against SDPA with the dense mask, for every mask kind and
    with a key padding mask: on CUDA forward and gradients in bf16 at DiT-XL/2 256 and PixArt-Σ 1024 shapes (fp32
    reference), on the CPU the forward at debug size in fp32 (FlexAttention has no CPU backward)."""
    import torch.nn.functional as F

    from ard_scale.config.ard import MASK_KINDS
    from ard_scale.models.attention import group_mask, token_mask
    from ard_scale.models.flex import history_attention

    shapes = (
        {"dit_xl_2_256": (8, 16, 256, 72), "pixart_sigma_1024": (1, 16, 4096, 72)} if gpu else {"debug": (2, 2, 40, 16)}
    )
    dtype = torch.bfloat16 if gpu else torch.float32
    out, worst = {}, 0.0
    for name, (B, H, L, d) in shapes.items():
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, 4 * L, d, generator=g).to(device, dtype) for _ in range(3))
        keep = torch.ones(B, 4 * L, dtype=torch.bool, device=device)
        keep[0, 3:L] = False
        for mask in MASK_KINDS:
            for padded in (False, True):
                mask_SS, km = group_mask(4, mask, 2), keep if padded else None
                ins = [t.clone().requires_grad_(gpu) for t in (q, k, v)]
                ref_ins = [t.detach().float().requires_grad_(gpu) for t in (q, k, v)]
                o = history_attention(*ins, mask_SS, km)
                dense = token_mask(mask_SS.to(device), L)
                dense = dense if km is None else dense & km[:, None, None, :]
                r = F.scaled_dot_product_attention(*ref_ins, attn_mask=dense)
                row = {"forward_rel_err": rel_err(o.float(), r)}
                if gpu:
                    grad = torch.randn_like(r)
                    (o.float() * grad).sum().backward()
                    (r * grad).sum().backward()
                    row["grad_rel_err"] = max(
                        rel_err(a.grad.float(), b.grad) for a, b in zip(ins, ref_ins, strict=True)
                    )
                out[f"{name}/{mask}{'/padded' if padded else ''}"] = row
                worst = max(worst, *row.values())
    limit = 3e-2 if gpu else TOLERANCE
    print(
        f"   flex vs dense sdpa, {len(out)} cases ({dtype}): worst rel err {worst:.2e} -> "
        f"{'PASS' if worst <= limit else 'FAIL'} (<= {limit})"
    )
    if worst > limit:
        raise AssertionError(f"flex differs from the dense SDPA reference: worst rel err {worst:.2e} > {limit}")
    return {"cases": out, "worst_rel_err": worst, "limit": limit}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--cpu", action="store_true", help="CPU at debug size (28 blocks of width 32, L=16)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--batch", type=int, default=None, help="training batch (default 16 GPU, 2 CPU)")
    parser.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 16 GPU, 2 CPU)")
    parser.add_argument("--inv-batch", type=int, default=None, help="invariant batch (default 4 GPU, 2 CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2 GPU, 1 CPU)")
    parser.add_argument("--autocast", choices=["bf16", "none"], default=None, help="speed section (bf16 GPU, none CPU)")
    parser.add_argument("--causal-layers", type=int, default=6)
    parser.add_argument("--flops", action="store_true", help="also count the FLOP ratios on meta (~1 min of CPU)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --cpu for the debug-size run")
    gpu = not args.cpu
    device = torch.device("cuda" if gpu else "cpu")
    args.batch = args.batch or (16 if gpu else 2)
    args.sample_batch = args.sample_batch or (16 if gpu else 2)
    args.inv_batch = args.inv_batch or (4 if gpu else 2)
    args.rounds = args.rounds or (10 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (2 if gpu else 1)
    args.autocast = args.autocast or ("bf16" if gpu else "none")
    size, overrides = ("dit_xl_2_256", {}) if gpu else ("debug", {"num_layers": 28})

    check = Check(args.json)
    check.section("environment", lambda: environment(device))
    t0 = time.perf_counter()
    teacher = build_teacher("dit", size, device=device, **overrides)
    num_classes = teacher.num_classes
    n_params = sum(p.numel() for p in teacher.parameters())
    print(
        f"\n   teacher dit/{size}{overrides or ''}: {n_params / 1e6:.1f} M parameters, depth {teacher.depth}, "
        f"L={(teacher.sample_size // teacher.patch_size) ** 2} tokens per state, built in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    check.result["model"] = {"size": size, "overrides": overrides, "params_m": n_params / 1e6, "depth": teacher.depth}
    schedule = VPSchedule()
    check.section("invariants", lambda: invariants(teacher, schedule, device, args.inv_batch, num_classes))
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    check.section("flex", lambda: flex_check(device, gpu))
    check.section("speed", lambda: speed(teacher, schedule, device, args, num_classes))
    if args.flops:
        check.section("flops", lambda: flop_ratios(size, overrides, args.causal_layers))
    else:
        print(
            "\n   counted FLOPs (bench/flops.py, README): DiT-XL/2 256px S=4, ARD N=6 / N=0 = 1.01145 sampling, "
            "1.0229 training forward (run with --flops to count them here)"
        )
    teacher = None  # free the DiT before the FLUX section
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    check.section("flux_invariants", lambda: flux_invariants(device, gpu, args.inv_batch))
    check.result["failed_sections"] = check.failed
    check.save(complete=True)
    print(f"\n== gpu_check.py done; failed sections: {check.failed or 'none'}", flush=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
