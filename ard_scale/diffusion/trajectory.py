"""Teacher ODE trajectories recorded on the student grid (DESIGN.md §1 "Teacher trajectory", invariant 5).

`teacher_trajectory` draws x_{τ_S} ~ N(0, I) per sample from the sample's own seed, solves the teacher's guided
probability-flow ODE over a teacher grid that contains every student time exactly (K sub-steps per student interval),
and records the S+1 states x_{τ_S} … x_{τ_0} (and optionally the teacher's x̂0 at each τ_s).

Matching a diffusers pipeline (invariant 5, tests/unit/diffusion/test_pipeline_equivalence.py):
- timesteps: `diffusers_grid(scheduler)` turns a DDIMScheduler / DPMSolverMultistepScheduler (after `set_timesteps`)
  into the `VPSchedule`, the explicit integer teacher grid (the scheduler's own `timestep_spacing`, then the clean
  endpoint) and the solver name; pass them as `schedule=`, `teacher_grid=`, `solver=`, with `student_grid=` a subset
  of that grid. DDIM is reproducible with 'leading' spacing (or any spacing whose steps are T//N apart): diffusers'
  DDIM steps from t to t − T//N, not to the next listed timestep. DPM-Solver++(2M): first and last steps first order.
- noise: `draw_noise(seeds)` draws what diffusers' `randn_tensor` draws from a list of per-sample CPU generators.
- guidance: out_u + w·(out_c − out_u) over all latent channels, learned-sigma channels dropped — the DiTPipeline and
  PixArt(-Σ) form (`guided_channels=None`); facebookresearch/DiT guides 3 channels (`guided_channels=3`). diffusers
  pipelines skip guidance for w <= 1; here w != 1 is always applied. DiTPipeline's null class is hard-coded 1000.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import CLEAN_T, FlowSchedule, Schedule, VPSchedule, check_close_grid
from ard_scale.diffusion.solvers import Denoiser, check_solver, guided_model, solve
from ard_scale.errors import UserError
from ard_scale.utils.noise import Draws

Record = Literal["noisy", "x0"]


@dataclass
class Trajectory:
    """Teacher states on the student grid.

    states: (B, S+1, C, H, W) noisy x_{τ_s} for s = S … 0 (index 0 is the noise, index S the teacher's sample).
    x0:     (B, S+1, C, H, W) the teacher's guided x̂0 at τ_S … τ_1, then the final sample (record='x0'), else None.
    times:  (S+1,) float64 student times τ_S … τ_0 (schedule units; VP ends at CLEAN_T).
    seeds:  (B,) long per-sample noise seeds (None when the noise was given).
    """

    states: torch.Tensor
    times: torch.Tensor
    x0: torch.Tensor | None = None
    seeds: torch.Tensor | None = None

    @property
    def final(self) -> torch.Tensor:
        return self.states[:, -1]


def draw_noise(
    seeds: Sequence[int] | torch.Tensor, shape_CHW: Sequence[int], *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(B, C, H, W) N(0, I) noise, sample b drawn on the CPU from its own seed (`ard_scale.utils.noise.Draws`), so a
    sample's noise does not depend on the batch it is in nor on the device. For seeds below 2**32, the same numbers
    as diffusers' `randn_tensor` with a list of CPU generators; above, all 64 bits of the seed count."""
    seeds = [int(s) for s in (seeds.tolist() if torch.is_tensor(seeds) else seeds)]
    noise = [Draws(s).normal((1, *shape_CHW)) for s in seeds]
    return torch.cat(noise).to(device=device, dtype=dtype)


def uniform_teacher_grid(schedule: Schedule, num_student_steps: int, substeps: int) -> torch.Tensor:
    """The default teacher grid: K = `substeps` uniform sub-steps inside each student interval, i.e. the schedule's
    own grid with S·K steps (which contains `schedule.grid(S)` exactly). (S·K+1,) float64."""
    if num_student_steps < 1 or substeps < 1:
        raise UserError(
            f"num_student_steps={num_student_steps} and substeps={substeps} must both be >= 1 "
            "(K solver sub-steps inside each of the S student intervals)"
        )
    return schedule.grid(num_student_steps * substeps)


def teacher_trajectory(
    denoise: Denoiser,
    schedule: Schedule,
    cond: Condition,
    *,
    latent_shape: Sequence[int],
    seeds: Sequence[int] | torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    null_cond: Condition | None = None,
    guidance_scale: float = 1.0,
    num_student_steps: int = 4,
    substeps: int | None = None,
    solver: str = "ddim",
    record: Record = "noisy",
    guided_channels: int | None = None,
    guide=None,
    student_grid: torch.Tensor | None = None,
    teacher_grid: torch.Tensor | None = None,
    gather: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Trajectory:
    """Solve the teacher's guided PF-ODE from per-sample seeded noise and record it on the student grid.

    denoise:          `denoise(x_t, t_model_B, cond) -> native output` (a `Teacher`, an engine wrapping one, ...).
    cond / null_cond: the batch's conditions and its null conditions (same batch size; needed iff guidance != 1).
    latent_shape:     (C, H, W) of one latent.
    seeds / noise:    exactly one: per-sample seeds (noise from `draw_noise`: bit-identical for a seed in any batch;
                      the states then agree up to the teacher kernels' batch-size-dependent rounding), or the noise.
    num_student_steps, substeps: S and K; the teacher grid is `schedule.grid(S·K)` (default K = 6).
    solver:           one of `solvers.SOLVERS` ('ddim', 'euler', 'heun', 'dpm++2m').
    record:           'noisy' (states only, the paper's target) or 'x0' (also the teacher's x̂0 at each τ_s).
    guided_channels:  guide only the first k latent channels (facebookresearch/DiT: 3); None = all (diffusers).
    guide:            `guide(out_c, out_u, w)`, the teacher family's CFG combination (`Family.guide`; None = the
                      plain formula): Qwen-Image's pipeline rescales it to the conditional prediction's norm.
    student_grid:     explicit student times (default `schedule.grid(S)`).
    teacher_grid:     explicit teacher grid (e.g. from `diffusers_grid`); must contain every student time.
    gather:           context-manager factory entered once around the whole solver loop (the distributed layer
                      gathers ZeRO-3 teacher parameters once per trajectory batch here).
    """
    check_solver(solver)
    if record not in ("noisy", "x0"):
        raise UserError(f"unknown record {record!r}; choose 'noisy' (x_τ states) or 'x0' (also teacher x̂0)")
    if (seeds is None) == (noise is None):
        raise UserError("give exactly one of `seeds` (one per sample) or `noise` (B, C, H, W)")
    if student_grid is None:
        student_grid = schedule.grid(num_student_steps)
    student_grid = torch.as_tensor(student_grid, dtype=torch.float64)
    if teacher_grid is None:
        teacher_grid = uniform_teacher_grid(schedule, len(student_grid) - 1, 6 if substeps is None else substeps)
    elif substeps is not None:
        raise UserError("give either `substeps` (K sub-steps per student interval) or an explicit `teacher_grid`")
    teacher_grid = torch.as_tensor(teacher_grid, dtype=torch.float64)
    check_close_grid(teacher_grid, student_grid)
    if abs(float(teacher_grid[0] - student_grid[0])) > 1e-9 or abs(float(teacher_grid[-1] - student_grid[-1])) > 1e-9:
        raise UserError(
            f"the teacher grid runs {float(teacher_grid[0])} -> {float(teacher_grid[-1])} but the student grid "
            f"{float(student_grid[0])} -> {float(student_grid[-1])}; both must start at the noise and end at the "
            "same clean time"
        )
    record_at = [int(torch.argmin((teacher_grid - t).abs())) for t in student_grid.tolist()]

    if noise is None:
        x = draw_noise(seeds, latent_shape, device=device, dtype=dtype)
        seeds_t = torch.as_tensor([int(s) for s in seeds], dtype=torch.long)
    else:
        if tuple(noise.shape[1:]) != tuple(latent_shape):
            raise UserError(f"noise of shape {tuple(noise.shape)} does not match latent_shape {tuple(latent_shape)}")
        x, seeds_t = noise.to(device=device if device is not None else noise.device, dtype=dtype), None
    if cond.batch_size != x.shape[0]:
        raise UserError(f"{x.shape[0]} seeds/noise samples but a condition batch of {cond.batch_size}")
    cond = cond.to(x.device)
    null_cond = None if null_cond is None else null_cond.to(x.device)
    model = guided_model(denoise, cond, null_cond, guidance_scale, guided_channels=guided_channels, guide=guide)

    slot = {i: k for k, i in enumerate(record_at)}
    states = x.new_empty((x.shape[0], len(record_at), *x.shape[1:]))
    x0s = states.new_empty(states.shape) if record == "x0" else None

    def on_state(i, x_i):
        if i in slot:
            states[:, slot[i]] = x_i

    def on_eval(i, x_i, x0_i):
        if x0s is not None and i in slot:
            x0s[:, slot[i]] = x0_i

    with torch.no_grad(), gather():
        solve(model, schedule, x, teacher_grid, solver, on_eval=on_eval, on_state=on_state)
    if x0s is not None:
        x0s[:, -1] = states[:, -1]
    return Trajectory(states=states, times=student_grid, x0=x0s, seeds=seeds_t)


def diffusers_grid(scheduler) -> tuple[Schedule, torch.Tensor, str]:
    """(schedule, teacher grid, solver) reproducing a diffusers scheduler after `set_timesteps(N)`: for VP the grid is
    its integer `timesteps` (whatever its `timestep_spacing`) then the clean endpoint.

    Supported: linear betas (not rescaled to zero terminal SNR); DDIM with η=0, clip_sample=False,
    set_alpha_to_one=True and 'leading' spacing (DDIM steps from t to t − T//N, which is the next listed timestep only
    for 'leading'); DPM-Solver++ 2M (midpoint, final_sigmas_type='zero', no Karras/exponential/beta/flow sigmas);
    FlowMatchEulerDiscreteScheduler (SD3: its shifted sigmas are the grid, Euler; dynamic shifting (give `mu` to
    `set_timesteps`, as FluxPipeline and QwenImagePipeline do) and Qwen-Image's `shift_terminal` stretch are already
    in those sigmas, so the returned schedule's own `shift` is then unused: pass the grid explicitly; no stochastic
    sampling). Anything else raises.
    """
    cfg = scheduler.config
    name = type(scheduler).__name__
    if name == "FlowMatchEulerDiscreteScheduler":
        return _flow_match_grid(scheduler)
    problems = []
    if cfg.beta_schedule != "linear" or cfg.trained_betas is not None:
        problems.append(f"beta_schedule={cfg.beta_schedule!r} (need 'linear', no trained_betas)")
    if getattr(cfg, "thresholding", False):
        problems.append("thresholding=True (need False)")
    if getattr(cfg, "rescale_betas_zero_snr", False):  # its ᾱ table is not the linear betas' (zero terminal SNR)
        problems.append("rescale_betas_zero_snr=True (need False: the VP schedule is the plain linear-beta one)")
    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        problems.append(f"prediction_type={cfg.prediction_type!r} (need 'epsilon' or 'v_prediction')")
    timesteps = [int(t) for t in scheduler.timesteps.tolist()]
    if name == "DDIMScheduler":
        solver = "ddim"
        if cfg.clip_sample:
            problems.append("clip_sample=True (need False: clipping is not part of the ODE)")
        if not cfg.set_alpha_to_one:
            problems.append("set_alpha_to_one=False (need True: the last step must reach the clean endpoint)")
        step = cfg.num_train_timesteps // scheduler.num_inference_steps
        if any(a - step != b for a, b in zip(timesteps, timesteps[1:], strict=False)) or timesteps[-1] - step >= 0:
            problems.append(
                f"timestep_spacing={cfg.timestep_spacing!r}: DDIM steps from t to t - {step}, which is not the next "
                "listed timestep (use 'leading' with steps_offset=0)"
            )
    elif name == "DPMSolverMultistepScheduler":
        solver = "dpm++2m"
        if cfg.algorithm_type != "dpmsolver++" or cfg.solver_order != 2 or cfg.solver_type != "midpoint":
            problems.append(
                f"algorithm_type={cfg.algorithm_type!r}, solver_order={cfg.solver_order}, solver_type="
                f"{cfg.solver_type!r} (need 'dpmsolver++', 2, 'midpoint')"
            )
        if cfg.final_sigmas_type != "zero":
            problems.append(f"final_sigmas_type={cfg.final_sigmas_type!r} (need 'zero')")
        for flag in (
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_flow_sigmas",
            "euler_at_final",
        ):
            if getattr(cfg, flag, False):
                problems.append(f"{flag}=True (need False)")
        if getattr(cfg, "lambda_min_clipped", -float("inf")) != -float("inf"):
            problems.append("lambda_min_clipped is set (need -inf)")
    else:
        raise UserError(f"unsupported diffusers scheduler {name}; use DDIMScheduler or DPMSolverMultistepScheduler")
    if problems:
        raise UserError(f"{name} config cannot be reproduced: " + "; ".join(problems))
    schedule = VPSchedule(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
    )
    return schedule, torch.tensor([*timesteps, CLEAN_T], dtype=torch.float64), solver


def _flow_match_grid(scheduler) -> tuple[FlowSchedule, torch.Tensor, str]:
    cfg = scheduler.config
    flags = (  # dynamic shifting and shift_terminal act on the sigmas set_timesteps has made: they are the grid
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "stochastic_sampling",
        "invert_sigmas",
    )
    problems = [f"{flag}=True (need False)" for flag in flags if getattr(cfg, flag, False)]
    if problems:
        raise UserError("FlowMatchEulerDiscreteScheduler config cannot be reproduced: " + "; ".join(problems))
    return FlowSchedule(shift=cfg.shift), scheduler.sigmas.to(torch.float64), "euler"
