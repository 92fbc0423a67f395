"""Teacher-trajectory generator vs the diffusers pipeline's denoising loop, measured alternately in one run.

    python bench/trajectory.py --json out.json

Same CPU-sized PixArt-style teacher (random weights; default 8 layers, D=256, 32x32 latents, patch 2: 256 tokens),
same noise, DPM-Solver++(2M) steps, batch and guidance. Ours: `teacher_trajectory` (recording the S+1 student states);
diffusers: `PixArtSigmaPipeline(..., output_type="latent")` with precomputed prompt embeddings (no T5, no VAE).
Repeats are interleaved (ours, diffusers, ours, ...; the order flips every repeat) and medians are reported.
JSON keys: `speed_ratio_vs_diffusers` (diffusers median time / ours; > 1 means ours is faster),
`paired_speed_ratio_median` (median over repeats of the adjacent runs' ratio: steadier under load),
`median_overhead_s_per_batch` (time outside the transformer's forward: solver, CFG, bookkeeping) and
`max_rel_err_vs_diffusers` (largest ‖ours − diffusers‖ / ‖diffusers‖ of the final latents over the repeats), checked
against `latents_tolerance` (`latents_match`; exit status 1 when they differ).
Runs on CUDA when available (`--device`), in fp32 or (`--dtype bf16`) with bf16 weights on both sides.
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

from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline  # noqa: E402

from ard_scale.diffusion.condition import Condition  # noqa: E402
from ard_scale.diffusion.trajectory import diffusers_grid, draw_noise, teacher_trajectory  # noqa: E402
from ard_scale.models.teachers import build_teacher  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# largest ‖ours − diffusers‖ / ‖diffusers‖ of the final latents for "the same latents": fp32 differs by summation
# order only; in bf16 the pipeline rounds its latents to bf16 after every step, ours keeps fp32 states (debug size,
# 8 steps: 8e-3)
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=256, help="D = heads x 64")
    parser.add_argument("--latent-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="teacher steps (a multiple of --student-steps)")
    parser.add_argument("--student-steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help="the teacher's weights on both sides (bf16: ours keeps its fp32 solver state, as the trainer does; the "
        "pipeline its bf16 latents)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps % args.student_steps:
        parser.error(f"--steps {args.steps} must be a multiple of --student-steps {args.student_steps}")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    caption_len, caption_dim = 32, 64
    teacher = build_teacher(
        "pixart",
        "debug",
        num_layers=args.layers,
        num_attention_heads=args.width // 64,
        attention_head_dim=64,
        sample_size=args.latent_size,
        cross_attention_dim=args.width,
        caption_channels=caption_dim,
    ).to(device, dtype)
    g = torch.Generator().manual_seed(0)
    text = torch.randn(args.batch, caption_len, caption_dim, generator=g).to(device, dtype)
    mask = torch.ones(args.batch, caption_len, dtype=torch.long, device=device)
    mask[:, caption_len // 2 :] = 0
    null_text = torch.randn(1, caption_len, caption_dim, generator=g).to(device, dtype).expand(args.batch, -1, -1)
    null_text = null_text.contiguous()
    null_mask = torch.zeros_like(mask)
    null_mask[:, :1] = 1
    seeds = list(range(args.batch))
    shape = (teacher.in_channels, args.latent_size, args.latent_size)

    pipe = PixArtSigmaPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=teacher.model, scheduler=DPMSolverMultistepScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(args.steps)
    schedule, grid, solver = diffusers_grid(pipe.scheduler)
    cond, null = Condition(text=text, text_mask=mask), Condition(text=null_text, text_mask=null_mask)
    sub = args.steps // args.student_steps

    def ours():
        tr = teacher_trajectory(
            teacher,
            schedule,
            cond,
            null_cond=null,
            guidance_scale=args.guidance,
            solver=solver,
            teacher_grid=grid,
            student_grid=grid[::sub],
            latent_shape=shape,
            seeds=seeds,
            device=device,
        )
        return tr.final

    def theirs():
        return pipe(
            negative_prompt=None,
            prompt_embeds=text,
            prompt_attention_mask=mask,
            negative_prompt_embeds=null_text,
            negative_prompt_attention_mask=null_mask,
            guidance_scale=args.guidance,
            latents=draw_noise(seeds, shape, device=device, dtype=dtype),  # the dtype its own noise would have
            num_inference_steps=args.steps,
            output_type="latent",
            use_resolution_binning=False,
            height=args.latent_size * pipe.vae_scale_factor,
            width=args.latent_size * pipe.vae_scale_factor,
        ).images

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # time inside the transformer's forward too, so that overhead (everything but the network) is separable from the
    # machine's noise (a shared CPU makes whole-run ratios wobble by a few %)
    model_time = [0.0]
    network_forward = teacher.model.forward

    def forward_timed(*a, **k):
        sync()
        t0 = time.perf_counter()
        out = network_forward(*a, **k)
        sync()
        model_time[0] += time.perf_counter() - t0
        return out

    teacher.model.forward = forward_timed

    def timed(fn):
        sync()
        model_time[0] = 0.0
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, model_time[0], out

    ours(), theirs()  # warm-up (allocator, kernels, lazy imports)
    times = {"ours": [], "diffusers": []}
    overheads = {"ours": [], "diffusers": []}
    errs = []
    for r in range(args.repeats):
        order = ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours")
        outs = {}
        for name in order:
            dt, in_model, outs[name] = timed(ours if name == "ours" else theirs)
            times[name].append(dt)
            overheads[name].append(dt - in_model)
        errs.append(float((outs["ours"] - outs["diffusers"]).norm() / outs["diffusers"].norm()))

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["diffusers"] / med["ours"]
    paired = statistics.median(d / o for d, o in zip(times["diffusers"], times["ours"], strict=True))
    print(
        f"teacher: PixArt-style, {args.layers} layers, D={args.width}, {args.latent_size}x{args.latent_size} latents, "
        f"batch {args.batch}, {args.steps} DPM-Solver++(2M) steps, guidance {args.guidance}, {device.type}"
    )
    over = {k: statistics.median(v) for k, v in overheads.items()}
    print(f"{'':<12}{'median s/batch':>16}{'min s/batch':>13}{'overhead ms':>13}   all repeats (s)")
    for k in ("ours", "diffusers"):
        print(
            f"{k:<12}{med[k]:>16.3f}{min(times[k]):>13.3f}{over[k] * 1e3:>13.1f}   "
            f"{' '.join(f'{t:.3f}' for t in times[k])}"
        )
    print(
        f"speed_ratio_vs_diffusers (diffusers / ours, medians): {ratio:.3f}   median of per-repeat ratios: {paired:.3f}"
    )
    tolerance = TOLERANCE[args.dtype]
    match = max(errs) <= tolerance
    print(f"max_rel_err_vs_diffusers: {max(errs):.2e} -> {'PASS' if match else 'FAIL'} (<= {tolerance}, {args.dtype})")
    results = {
        "speed_ratio_vs_diffusers": ratio,
        "max_rel_err_vs_diffusers": max(errs),
        "latents_match": match,
        "latents_tolerance": tolerance,
        "paired_speed_ratio_median": paired,
        "median_s_per_batch": med,
        "median_overhead_s_per_batch": over,
        "times_s": times,
        "config": {k: str(v) for k, v in vars(args).items() if k != "json"},
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(0 if main()["latents_match"] else 1)
