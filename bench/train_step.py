"""Training speed at real size (issue 18): history attention flex vs sdpa, a whole step, and the teacher trajectory.

    python bench/train_step.py --json train_step.json                # CUDA: real sizes, random weights, bf16
    python bench/train_step.py --debug --json out.json               # CPU: debug sizes (so it cannot rot)
    python bench/train_step.py --parts peak,student --json out.json  # some parts only

The JSON is rewritten after every part, so a run stopped part-way (gpu_check.sh's STEP_TIMEOUT) keeps the parts it
finished; `complete` says whether every part asked for ran.

Parts (each reports its own failure; the rest still run):
- peak:       the device's measured bf16 matmul peak (TFLOP/s), the denominator of `mfu`.
- student:    student fwd+bwd in bf16 at PixArt-Σ 1024 (L=4096, S=4) and DiT-XL/2 256 (L=256), ARD (N=6) over the
              N=0 baseline with the history attention on `flex` and on `sdpa`, measured side by side (warm-up, then
              rounds in rotated order, medians); batch = the largest of --batches that fits. JSON per model:
              `ard_over_baseline_flex`, `ard_over_baseline_sdpa`. On CPU FlexAttention has no backward, so the
              debug run times the forward only (`measured: forward`).
- step:       one whole regression step at PixArt-Σ 1024 on one device, as ard_scale.trainer.step runs it: the
              teacher trajectory (S·K solver steps, batched CFG, a frozen ZeRO-3 bf16 engine gathered once) + the
              student fwd/bwd in a ZeRO-3 bf16 DeepSpeed engine + its AdamW step (fp32 master weights, clipping);
              one process (nccl on CUDA, gloo on CPU); seconds split teacher / student / optimizer, student
              tokens/s, and `mfu` = counted model FLOPs (teacher forwards ×2 for CFG, student 3× its forward with
              the history attention counted at the blocks its mask allows) / time / measured peak; also per phase:
              `teacher_mfu` (trajectory) and `student_mfu` (student fwd+bwd, the figure of issue 18's 45 % goal).
- trajectory: bench/trajectory.py (our teacher_trajectory vs PixArtSigmaPipeline's own denoising loop, same model,
              noise, steps and guidance, bf16 weights, no decode), at PixArt-Σ 1024 width and depth on CUDA, debug
              size on CPU; the part fails (its figures kept) if the two loops' final latents differ.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import trajectory as trajectory_bench  # noqa: E402  (bench/trajectory.py)
from gpu_check import interleaved, sync, timed, write_json  # noqa: E402  (bench/gpu_check.py: the same timing)

from ard_scale.config.ard import ARDConfig  # noqa: E402
from ard_scale.diffusion.condition import Condition  # noqa: E402
from ard_scale.diffusion.schedules import VPSchedule  # noqa: E402
from ard_scale.diffusion.trajectory import teacher_trajectory  # noqa: E402
from ard_scale.losses.regression import RegressionLoss  # noqa: E402
from ard_scale.models.attention import group_mask  # noqa: E402
from ard_scale.models.flops import count_flops  # noqa: E402
from ard_scale.models.student import ARDStudent  # noqa: E402
from ard_scale.models.teachers import build_teacher  # noqa: E402

PARTS = ("peak", "student", "step", "trajectory")
S, N = 4, 6
# (family, real size, debug overrides, text tokens real/debug, batches to try, largest first)
MODELS = {
    "pixart_sigma_1024": ("pixart", "pixart_sigma_1024", {"num_layers": 8, "sample_size": 16}, (300, 6), (8, 4, 2, 1)),
    "dit_xl_2_256": ("dit", "dit_xl_2_256", {"num_layers": 8}, (0, 0), (64, 32, 16, 8)),
}


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def random_condition(teacher, batch: int, device, text_tokens: int, seed: int) -> Condition:
    g = torch.Generator().manual_seed(seed)
    if teacher.spec.condition_kind == "labels":
        return Condition(labels=torch.randint(0, teacher.num_classes, (batch,), generator=g).to(device))
    c = teacher.example_condition(batch, "cpu", text_tokens)
    return Condition(text=torch.randn(c.text.shape, generator=g).to(device), text_mask=c.text_mask.to(device))


def build(model: str, debug: bool, device, dtype=None):
    family, size, overrides, _, _ = MODELS[model]
    teacher = build_teacher(family, "debug" if debug else size, device=device, **(overrides if debug else {}))
    return teacher.to(dtype) if dtype is not None else teacher


# -- peak ------------------------------------------------------------------------------------------------------------
def peak(device, debug: bool) -> dict:
    n = 512 if debug else 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    reps = 3 if debug else 50
    (a @ b).sum().item()
    t = min(timed(lambda: [a @ b for _ in range(reps)], device) for _ in range(3))
    tflops = 2 * n**3 * reps / t / 1e12
    print(f"   bf16 matmul {n}x{n}: {tflops:.1f} TFLOP/s (best of 3 x {reps})")
    return {"bf16_matmul_tflops": tflops, "n": n}


# -- student ---------------------------------------------------------------------------------------------------------
def student_part(model: str, device, args) -> dict:
    family, _, _, text_tokens, batches = MODELS[model]
    teacher = build(model, args.debug, device, torch.bfloat16)
    side, C = teacher.sample_size, teacher.in_channels
    L = (side // teacher.patch_size) ** 2
    train = device.type == "cuda"  # FlexAttention has no backward on CPU: the debug run times the forward
    students = {
        "ard_flex": ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=N, attention="flex"), VPSchedule()),
        "ard_sdpa": ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=N, attention="sdpa"), VPSchedule()),
        "baseline": ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=0), VPSchedule()),
    }
    for st in students.values():
        st.to(device).train(train)

    def variants_for(B):
        g = torch.Generator().manual_seed(0)
        states = torch.randn(B, S, C, side, side, generator=g).to(device)
        cond = random_condition(teacher, B, device, text_tokens[1 if args.debug else 0], 1)

        def run(st):
            def fn():
                if train:
                    st(states, cond).float().square().mean().backward()
                    st.zero_grad(set_to_none=True)
                else:
                    with torch.no_grad():
                        st(states, cond)

            return fn

        return {k: run(st) for k, st in students.items()}

    batch = None
    for B in batches if not args.debug else (2,):
        try:  # sdpa first: its dense mask takes the most memory and it compiles nothing, so a batch that does not fit
            # is refused before flex attention compiles for it
            for _, fn in sorted(variants_for(B).items(), key=lambda kv: kv[0] != "ard_sdpa"):
                fn()
            batch = B
            break
        except torch.OutOfMemoryError:
            free(device)
            print(f"   batch {B}: out of memory, trying a smaller one")
    if batch is None:
        raise RuntimeError(f"no batch of {batches} fits")
    med = interleaved(variants_for(batch), device, args.rounds, args.warmup)
    mem = {}
    if device.type == "cuda":
        for k, fn in variants_for(batch).items():
            free(device)
            torch.cuda.reset_peak_memory_stats()
            fn()
            mem[k] = torch.cuda.max_memory_allocated() / 2**30
    out = {
        "family": family,
        "tokens_per_state": L,
        "S": S,
        "N": N,
        "batch": batch,
        "measured": "fwd+bwd" if train else "forward",
        "ms": {k: 1e3 * v for k, v in med.items()},
        "peak_mem_gib": mem,
        "ard_over_baseline_flex": med["ard_flex"] / med["baseline"],
        "ard_over_baseline_sdpa": med["ard_sdpa"] / med["baseline"],
        "flex_speedup_over_sdpa": med["ard_sdpa"] / med["ard_flex"],
        "allowed_fraction_of_dense_history": float(group_mask(S, "causal").float().mean()),
    }
    print(f"   {model}: L={L}, batch {batch}, {out['measured']}, bf16, medians of {args.rounds} rounds")
    for k, v in out["ms"].items():
        print(f"     {k:<10}{v:10.2f} ms  {mem.get(k, 0):.1f} GiB")
    print(
        f"   RATIO ARD N={N} / N=0: flex {out['ard_over_baseline_flex']:.4f}, sdpa {out['ard_over_baseline_sdpa']:.4f}"
        f"  (sdpa time / flex time {out['flex_speedup_over_sdpa']:.2f})"
    )
    students.clear()
    free(device)
    return out


# -- step ------------------------------------------------------------------------------------------------------------
def model_flops(model: str, debug: bool, B: int, text_tokens: int, K: int) -> dict:
    """Counted on meta: one teacher forward (per sample), the N=0 student forward, plus the history attention of the
    N masked blocks at the blocks the causal mask allows (what flex computes) — per step of batch B."""
    teacher = build(model, debug, "meta")
    with torch.device("meta"):
        base = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=0), VPSchedule())
    side, C = teacher.sample_size, teacher.in_channels
    cond = teacher.example_condition(1, "meta", text_tokens)
    states = torch.empty(1, S, C, side, side, device="meta")
    with torch.no_grad():
        teacher_f = count_flops(lambda: teacher(states[:, 0], torch.full((1,), 500.0, device="meta"), cond))
        student_f = count_flops(lambda: base(states, cond))
    L, D = (
        (side // teacher.patch_size) ** 2,
        teacher.model.config.num_attention_heads * teacher.model.config.attention_head_dim,
    )
    allowed = int(group_mask(S, "causal").sum())
    student_f += N * 4 * L * L * D * (allowed - S)  # QK^T and PV of the extra allowed group pairs, per layer
    return {
        "teacher_forward_gflops": teacher_f / 1e9,
        "student_forward_gflops": student_f / 1e9,
        "teacher_step_gflops": B * 2 * S * K * teacher_f / 1e9,  # S·K solver steps, batched CFG: 2 forwards each
        "student_step_gflops": B * 3 * student_f / 1e9,  # fwd+bwd: the backward counted as 2 forwards
        "step_gflops": B * (2 * S * K * teacher_f + 3 * student_f) / 1e9,
    }


def step_figures(med: dict, flops: dict, batch: int, tokens_per_state: int, peak_tflops: float | None) -> dict:
    """The step's derived figures from its median seconds per phase and its counted FLOPs: the split, student
    tokens/s, achieved TFLOP/s and model FLOPs utilisation against the measured bf16 matmul peak, for the whole step
    (`mfu`) and for its teacher trajectory and student fwd+bwd alone (issue 18's goal: student ≥ 45 %)."""
    total = sum(med.values())

    def utilisation(gflops: float, seconds: float) -> float | None:
        return gflops / seconds / 1e3 / peak_tflops if peak_tflops else None

    return {
        "step_s": total,
        "split": {k: v / total for k, v in med.items()},
        "student_tokens_per_s": batch * S * tokens_per_state / total,
        "achieved_tflops": flops["step_gflops"] / total / 1e3,
        "mfu": utilisation(flops["step_gflops"], total),
        "teacher_mfu": utilisation(flops["teacher_step_gflops"], med["teacher_s"]),
        "student_mfu": utilisation(flops["student_step_gflops"], med["student_s"]),
    }


def single_process_group(device) -> None:
    """A one-process torch.distributed group (nccl on CUDA, gloo on CPU) for DeepSpeed, unless a launcher made one."""
    from ard_scale.distributed.engines import init_distributed

    if torch.distributed.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(0)
    init_distributed()  # without a launcher's environment: one process on this host


def step_part(device, args, peak_tflops: float | None) -> dict:
    """One regression step as the trainer runs it (ard_scale.trainer.step.regression_step): the student in a ZeRO-3
    bf16 DeepSpeed engine (AdamW, fp32 master weights, gradient clipping 1.0), the teacher in a frozen ZeRO-3 bf16
    engine whose weights are gathered once per trajectory, built by ard_scale.distributed.engines on one process."""
    from ard_scale.distributed.engines import (
        build_frozen_engine,
        build_student_engine,
        frozen_ds_config,
        gather_once,
        student_ds_config,
    )

    model = "pixart_sigma_1024"
    _, _, _, text_tokens, _ = MODELS[model]
    T = text_tokens[1 if args.debug else 0]
    B, K = args.step_batch or (2 if args.debug else 8), args.substeps
    single_process_group(device)
    teacher = build(model, args.debug, device)  # built where it runs; the engines partition it there
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=N), VPSchedule()).train()
    student.activation_checkpointing = args.checkpointing
    train_attention = student.history_kernel(device)
    if device.type != "cuda":  # no flex backward on CPU
        student.cfg.attention = "sdpa"
    engine, _ = build_student_engine(
        student, student_ds_config(micro_batch=B, lr=1e-4, grad_clip=1.0, zero_stage=3, precision="bf16")
    )
    teacher_engine = build_frozen_engine(teacher, frozen_ds_config(micro_batch=B, precision="bf16"))
    loss_fn = RegressionLoss(S)
    side, C = teacher.sample_size, teacher.in_channels
    cond, null = random_condition(teacher, B, device, T, 1), random_condition(teacher, B, device, T, 2)

    def one_step(step: int) -> dict:
        t0 = time.perf_counter()
        tr = teacher_trajectory(
            teacher_engine,
            student.schedule,
            cond,
            null_cond=null,
            guidance_scale=4.5,
            num_student_steps=S,
            substeps=K,
            latent_shape=(C, side, side),
            seeds=list(range(step * B, (step + 1) * B)),
            gather=lambda: gather_once(teacher_engine),
            device=device,
        )
        sync(device)
        t1 = time.perf_counter()
        loss, _ = loss_fn(engine, tr.states, cond)
        engine.backward(loss)
        sync(device)
        t2 = time.perf_counter()
        engine.step()
        sync(device)
        t3 = time.perf_counter()
        return {"teacher_s": t1 - t0, "student_s": t2 - t1, "optimizer_s": t3 - t2, "loss": loss.item()}

    while True:  # the largest batch from --step-batch down that fits
        try:
            one_step(0)
            break
        except torch.OutOfMemoryError:
            engine.zero_grad()
            free(device)
            if B == 1:
                raise
            print(f"   step batch {B}: out of memory, trying {B // 2}")
            B = B // 2
            cond, null = random_condition(teacher, B, device, T, 1), random_condition(teacher, B, device, T, 2)
    if device.type == "cuda":  # the step's own peak: not the student part's students nor an out-of-memory try
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.step_warmup):
        one_step(1 + i)
    rows = [one_step(1 + args.step_warmup + i) for i in range(args.step_rounds)]
    med = {k: statistics.median(r[k] for r in rows) for k in ("teacher_s", "student_s", "optimizer_s")}
    L = (side // teacher.patch_size) ** 2
    flops = model_flops(model, args.debug, B, T, K)
    figures = step_figures(med, flops, B, L, peak_tflops)
    out = {
        "model": model,
        "batch": B,
        "teacher_steps": S * K,
        "guidance": 4.5,
        "history_attention": student.history_kernel(device),
        "configured_attention": train_attention,
        "activation_checkpointing": args.checkpointing,
        "engine": "deepspeed ZeRO-3 bf16, 1 process",
        "median_s": med,
        **figures,
        "flops": flops,
        "losses": [r["loss"] for r in rows],
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"   {model}: batch {B}, teacher {S * K} steps with CFG, student N={N} ({out['history_attention']}), "
        f"step {out['step_s']:.3f} s = teacher {med['teacher_s']:.3f} + student {med['student_s']:.3f} + optimizer "
        f"{med['optimizer_s']:.3f}; {out['student_tokens_per_s']:.0f} student tokens/s; "
        f"{out['achieved_tflops']:.2f} TFLOP/s"
        + (
            f", MFU {out['mfu']:.3f} (teacher {out['teacher_mfu']:.3f}, student fwd+bwd {out['student_mfu']:.3f})"
            if out["mfu"] is not None
            else ""
        )
    )
    return out


# -- trajectory ------------------------------------------------------------------------------------------------------
def trajectory_part(device, args) -> dict:
    if args.debug:
        argv = ["--layers", "2", "--width", "64", "--latent-size", "8", "--steps", "8", "--repeats", "3"]
    else:  # PixArt-Σ 1024 depth and width (18 heads x 64 = 1152), 128x128 latents, 24 = 4 x 6 steps
        argv = ["--layers", "28", "--width", "1152", "--latent-size", "128", "--steps", "24", "--repeats", "3"]
        argv += ["--batch", "2"]
    out = trajectory_bench.main(argv + ["--device", device.type, "--dtype", "bf16"])  # bf16 weights, as the step
    if not out["latents_match"]:  # recorded, then failed: the timing compares two loops that compute different things
        raise TrajectoryMismatch(out)
    return out


class TrajectoryMismatch(RuntimeError):
    def __init__(self, result: dict):
        super().__init__(
            f"teacher_trajectory's final latents differ from PixArtSigmaPipeline's: rel err "
            f"{result['max_rel_err_vs_diffusers']:.2e} > {result['latents_tolerance']}"
        )
        self.result = result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--debug", action="store_true", help="debug sizes on the CPU (even where CUDA is present)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--models", default=",".join(MODELS), help="models of the student part")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 6 CUDA, 2 debug)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2 CUDA, 1 debug)")
    parser.add_argument("--step-rounds", type=int, default=None, help="timed steps of the step part (3 CUDA, 2 debug)")
    parser.add_argument("--step-warmup", type=int, default=None, help="untimed steps first (default 1)")
    parser.add_argument("--step-batch", type=int, default=None, help="batch of the step part (default 8, debug 2)")
    parser.add_argument("--substeps", type=int, default=None, help="K teacher steps per student step (6, debug 1)")
    parser.add_argument(
        "--no-checkpointing",
        dest="checkpointing",
        action="store_false",
        help="no activation checkpointing in the step part (on by default: 8 x 4 x 4096 tokens need it on 80 GB)",
    )
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {PARTS}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.debug else "cpu")
    if device.type == "cpu" and not args.debug:
        parser.error("no CUDA device: pass --debug for the debug-size run on CPU")
    args.rounds = args.rounds or (2 if args.debug else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.debug else 2)
    args.substeps = args.substeps or (1 if args.debug else 6)
    # a real-size step is ~9 s (3.5 PFLOP at batch 8): fewer of them than of the student part's ~0.5 s rounds, so that
    # bench/gpu_check.sh stays within its 8 minutes on an H100
    args.step_rounds = args.step_rounds or (2 if args.debug else 3)
    args.step_warmup = args.step_warmup if args.step_warmup is not None else 1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    result: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "debug": args.debug}
    result["torch"] = torch.__version__
    result["command"] = "python bench/train_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    failed = []
    result["complete"] = False  # until every part asked for has run

    def section(name, fn):
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # report and go on: one device run must tell as much as it can
            traceback.print_exc()
            result[name] = {**getattr(e, "result", {}), "error": f"{type(e).__name__}: {e}"}
            failed.append(name)
        free(device)
        print(f"   ({name}: {time.perf_counter() - t0:.1f} s)", flush=True)
        save()

    def save():  # after every part: a run stopped by gpu_check.sh's STEP_TIMEOUT keeps the parts it finished
        result["failed_parts"] = failed
        if args.json:
            write_json(args.json, result)

    if "peak" in parts:
        section("peak", lambda: peak(device, args.debug))
    if "student" in parts:
        for model in args.models.split(","):
            section(f"student_{model}", lambda model=model: student_part(model, device, args))
    if "step" in parts:
        tflops = result.get("peak", {}).get("bf16_matmul_tflops")
        section("step", lambda: step_part(device, args, tflops))
        if "step" in result and "mfu" in result["step"]:
            result["mfu"] = result["step"]["mfu"]
            result["student_mfu"] = result["step"]["student_mfu"]
    if "trajectory" in parts:
        section("trajectory", lambda: trajectory_part(device, args))
    result["complete"] = True
    save()
    print(f"\n== train_step.py done; failed parts: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    if torch.distributed.is_initialized():  # DeepSpeed's groups alive: end without finalisation (finish_process)
        from ard_scale.distributed.engines import finish_process

        finish_process(code)
    sys.exit(code)
