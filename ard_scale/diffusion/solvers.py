"""Classifier-free guidance and deterministic ODE solvers over a teacher grid, for any denoiser callable.

A *denoiser* is `denoise(x_t, t_model_B, cond) -> native output` (e.g. `ard_scale.models.teachers.Teacher`, a
DeepSpeed engine wrapping one, or a test function). Output channels beyond the latent's C (DiT/PixArt learned sigma)
are ignored for the ODE. `guided_model` turns a denoiser plus conditions into `model(x_t, t) -> ODE output (C
channels)`; `solve` integrates the probability-flow ODE over a decreasing time grid with one of `SOLVERS`:

- `ddim` / `euler`: the same first-order update, x' = α'·x̂0 + σ'·ε̂ (`first_order_step`) — DDIM (η=0) for VP and
  exactly Euler on the velocity for flow matching. One network evaluation per step.
- `heun`: Heun's second-order method (EDM Alg. 1) on the schedule's natural ODE — dy/ds = ε̂ with y = x/α, s = σ/α
  for VP (what diffusers' HeunDiscreteScheduler integrates), dx/dt = v̂ for flow matching. Two evaluations per step;
  the step onto the clean endpoint (σ' = 0) is an Euler step.
- `dpm++2m`: DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, midpoint form, as diffusers' DPMSolverMultistepScheduler with
  algorithm_type='dpmsolver++', solver_order=2): first step and the step onto σ' = 0 are first order (diffusers'
  final_sigmas_type='zero').
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule, Schedule
from ard_scale.errors import UserError

Denoiser = Callable[[torch.Tensor, torch.Tensor, Condition], torch.Tensor]
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B,C,H,W), t_model (B,)) -> ODE output (B,C,H,W)
# (conditional output, null output, scale) -> guided output, e.g. a family's `guide` (Qwen-Image rescales the norm)
Guide = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]

SOLVERS = ("ddim", "euler", "heun", "dpm++2m")
NUM_EVALS_PER_STEP = {"ddim": 1, "euler": 1, "heun": 2, "dpm++2m": 1}


def num_evals(solver: str, num_steps: int, *, guided: bool = False) -> int:
    """Network evaluations per sample of `solve` over `num_steps` steps of a grid ending at the clean endpoint
    (σ = 0), onto which every solver takes a one-evaluation step (Heun's is an Euler step); twice as many `guided`
    (a CFG pass beside each)."""
    return (NUM_EVALS_PER_STEP[solver] * (num_steps - 1) + 1) * (2 if guided else 1)


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise UserError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def guided_model(
    denoise: Denoiser,
    cond: Condition,
    null_cond: Condition | None = None,
    guidance_scale: float = 1.0,
    *,
    guided_channels: int | None = None,
    guide: Guide | None = None,
) -> Model:
    """Classifier-free guidance: out_u + w·(out_c − out_u), conditional and unconditional halves in ONE batched forward.

    guidance_scale == 1 runs the conditional half only. `guided_channels=k` guides only the first k latent channels
    and keeps the conditional prediction for the rest (facebookresearch/DiT's `forward_with_cfg` uses k = 3;
    diffusers' DiTPipeline and PixArt pipelines guide all channels, the default None). `guide(out_c, out_u, w)`
    replaces the formula where the teacher's pipeline combines the halves otherwise (a family's `Family.guide`:
    QwenImagePipeline rescales the result to the conditional prediction's norm). Note diffusers pipelines skip
    guidance for scale <= 1; here any scale != 1 is applied as written.
    """
    if guidance_scale != 1.0 and null_cond is None:
        raise UserError(
            f"guidance_scale={guidance_scale} needs a null condition (null class label, or the empty caption's T5 "
            "embedding); pass null_cond=... or use guidance_scale=1.0"
        )
    if guidance_scale == 1.0:
        return lambda x, t: denoise(x, t, cond)[:, : x.shape[1]]
    if null_cond.batch_size != cond.batch_size:
        raise UserError(
            f"null_cond has batch size {null_cond.batch_size} but cond has {cond.batch_size}; give one null "
            "condition per sample (e.g. repeat it)"
        )
    both = Condition.cat([cond, null_cond])
    w = float(guidance_scale)

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        out = denoise(torch.cat([x, x]), torch.cat([t, t]), both)[:, :c]
        out_c, out_u = out.chunk(2)
        guided = out_u + w * (out_c - out_u) if guide is None else guide(out_c, out_u, w)
        if guided_channels is not None and not 1 <= guided_channels <= c:
            raise UserError(f"guided_channels={guided_channels} must be in [1, {c}] (the state's channels)")
        if guided_channels is not None and guided_channels < c:
            guided = torch.cat([guided[:, :guided_channels], out_c[:, guided_channels:]], dim=1)
        return guided

    return model


def _scalars(schedule: Schedule, t: float) -> tuple[float, float]:
    alpha, sigma = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(alpha), float(sigma)


def solve(
    model: Model,
    schedule: Schedule,
    x: torch.Tensor,
    grid: torch.Tensor | Sequence[float],
    solver: str = "ddim",
    *,
    on_eval: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    on_state: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate from x at grid[0] to grid[-1] (a strictly decreasing time grid, schedule time units).

    `on_state(i, x_i)` is called with the state at every grid time i (0 … N); `on_eval(i, x_i, x0_i)` after the
    (first) network evaluation at grid time i < N, with that evaluation's x̂0. Returns the state at grid[-1].
    """
    check_solver(solver)
    times = [float(t) for t in (grid.tolist() if torch.is_tensor(grid) else grid)]
    if len(times) < 2 or any(b >= a for a, b in zip(times, times[1:], strict=False)):
        raise UserError(f"a solver grid needs at least 2 strictly decreasing times, got {times}")
    is_flow = isinstance(schedule, FlowSchedule)
    batch = x.shape[0]
    coeffs = [_scalars(schedule, t) for t in times]
    model_times = [schedule.model_time(torch.tensor(t)).to(x.device).expand(batch) for t in times]

    def evaluate(i: int, x_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return schedule.to_x0_eps(x_i, times[i], model(x_i, model_times[i]))

    prev_x0, prev_lam = None, None
    for i in range(len(times) - 1):
        if on_state is not None:
            on_state(i, x)
        x0, eps = evaluate(i, x)
        if on_eval is not None:
            on_eval(i, x, x0)
        (a, s), (a_n, s_n) = coeffs[i], coeffs[i + 1]
        first_order = a_n * x0 + s_n * eps
        if solver in ("ddim", "euler") or s_n == 0.0:
            x_next = first_order
        elif solver == "heun":
            x0_2, eps_2 = evaluate(i + 1, first_order)
            if is_flow:  # dx/dt = v = ε − x0
                v = 0.5 * ((eps - x0) + (eps_2 - x0_2))
                x_next = x + (times[i + 1] - times[i]) * v
            else:  # d(x/α)/d(σ/α) = ε
                x_next = a_n * (x / a + (s_n / a_n - s / a) * 0.5 * (eps + eps_2))
        else:  # dpm++2m, data prediction, midpoint form
            lam, lam_n = _lambda(a, s), _lambda(a_n, s_n)
            h = lam_n - lam
            if prev_x0 is None or not math.isfinite(lam - prev_lam):
                x_next = first_order
            else:
                r0 = (lam - prev_lam) / h
                d1 = (x0 - prev_x0) / r0
                x_next = (s_n / s) * x - (a_n * math.expm1(-h)) * (x0 + 0.5 * d1)
            prev_x0, prev_lam = x0, lam
        x = x_next
    if on_state is not None:
        on_state(len(times) - 1, x)
    return x


def _lambda(alpha: float, sigma: float) -> float:
    """Half log-SNR log(α/σ); −inf at α = 0 (flow matching's pure-noise end)."""
    return (math.log(alpha) if alpha > 0 else -math.inf) - math.log(sigma)
