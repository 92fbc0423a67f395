"""Noise schedules and the one conversion layer between (x_t, t, model output) and x̂0 / ε.

Every schedule writes a noisy state as x_t = α(t)·x0 + σ(t)·ε and knows how to read its network's native output.
A deterministic first-order step (DDIM for VP, Euler for flow matching — the same formula in (α, σ) form) is
`first_order_step`; the student's `solver` output parameterisation and the teacher's DDIM sampler both call it.

Time convention (what the network is fed):
- VP (DiT, PixArt): discrete index t ∈ [0, T-1], fractional values allowed (log ᾱ interpolated between integers);
  the clean endpoint is `CLEAN_T` (= -1), where ᾱ = 1 — diffusers' ``set_alpha_to_one`` end.
- Flow matching: t ∈ [0, 1], x_t = (1-t)·x0 + t·ε, clean at t = 0; the network is fed 1000·t (SD3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ard_scale.errors import UserError

VPPrediction = Literal["epsilon", "v_prediction"]
CLEAN_T = -1.0


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample scalars (B,) or () so they broadcast against `like` (B, ...)."""
    v = v.to(like.dtype)
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


@dataclass(frozen=True)
class VPSchedule:
    """Discrete variance-preserving schedule (DDPM linear betas, as DiT and PixArt train)."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: VPPrediction = "epsilon"

    def __post_init__(self):
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise UserError(f"unknown VP prediction_type {self.prediction_type!r}; choose 'epsilon' or 'v_prediction'")

    @property
    def t_max(self) -> float:
        return float(self.num_train_timesteps - 1)

    def log_alpha_bar_table(self) -> torch.Tensor:
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        return torch.cumsum(torch.log1p(-betas), 0)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, σ) at (possibly fractional) timesteps t; t < 0 is the clean endpoint (α=1, σ=0). float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        table = self.log_alpha_bar_table().to(t.device)
        tc = t.clamp(0, self.t_max)
        lo = tc.floor().long()
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        frac = tc - lo
        log_ab = table[lo] * (1 - frac) + table[hi] * frac
        log_ab = torch.where(t < 0, torch.zeros_like(log_ab), log_ab)
        alpha_bar = log_ab.exp()
        return alpha_bar.sqrt(), (1 - alpha_bar).clamp(min=0).sqrt()

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float32)

    def grid(self, num_steps: int) -> torch.Tensor:
        """Student grid τ_s = t_max·s/S for s = S…1, then the clean endpoint: (S+1,) float64."""
        s = torch.arange(num_steps, 0, -1, dtype=torch.float64)
        return torch.cat([self.t_max * s / num_steps, torch.tensor([CLEAN_T], dtype=torch.float64)])

    def to_x0_eps(self, x_t, t, out) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, sigma = (_bcast(v.to(x_t.device), x_t) for v in self.alpha_sigma(t))
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x_t - sigma * eps) / alpha
        else:  # v = α·ε − σ·x0
            x0 = alpha * x_t - sigma * out
            eps = sigma * x_t + alpha * out
        return x0, eps


@dataclass(frozen=True)
class FlowSchedule:
    """Rectified flow / flow matching, x_t = (1-t)·x0 + t·ε, velocity target ε − x0, SD3-style time shift."""

    shift: float = 1.0
    prediction_type: Literal["flow"] = "flow"

    def __post_init__(self):
        if self.prediction_type != "flow":
            raise UserError(f"unknown flow-matching prediction_type {self.prediction_type!r}; the only one is 'flow'")
        if not self.shift > 0:
            raise UserError(f"flow shift must be > 0, got {self.shift} (1.0 = no shift; SD3 uses 3.0)")

    @property
    def t_max(self) -> float:
        return 1.0

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, 1)
        return 1 - t, t

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float32) * 1000

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        """SD3's shift: t' = s·t / (1 + (s-1)·t)."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def grid(self, num_steps: int) -> torch.Tensor:
        s = torch.arange(num_steps, -1, -1, dtype=torch.float64)
        return self.shifted(s / num_steps)

    def to_x0_eps(self, x_t, t, out) -> tuple[torch.Tensor, torch.Tensor]:
        t_ = _bcast(torch.as_tensor(t, dtype=torch.float64).to(x_t.device), x_t)
        x0 = x_t - t_ * out
        eps = x_t + (1 - t_) * out
        return x0, eps


Schedule = VPSchedule | FlowSchedule


def dynamic_shift(
    image_seq_len: int,
    *,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FluxPipeline's resolution-dependent shift as a static one: μ is linear in the image token count and the
    scheduler's exponential time shift e^μ / (e^μ + 1/σ − 1) equals `FlowSchedule.shifted` with s = e^μ."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    mu = image_seq_len * slope + base_shift - slope * base_seq_len
    return math.exp(mu)


def schedule_for_recipe(d, latent_side: int, patch_size: int) -> Schedule:
    """`build_schedule` for a square latent of `latent_side` cut into patch_size² tokens."""
    return build_schedule(d, image_seq_len=(latent_side // patch_size) ** 2)


def build_schedule(d, *, image_seq_len: int | None = None) -> Schedule:
    """The schedule a recipe's `diffusion` section describes. With `dynamic_shift` the shift depends on the image
    token count (for FLUX.1 at 1024px: 4096 packed tokens), which the caller knows from the resolution."""
    if d.schedule == "vp":
        return VPSchedule(d.num_train_timesteps, d.beta_start, d.beta_end, d.prediction_type)
    if not d.dynamic_shift:
        return FlowSchedule(shift=d.shift)
    if image_seq_len is None:
        raise UserError("diffusion.dynamic_shift needs the image token count (the resolution) to set the shift")
    return FlowSchedule(
        shift=dynamic_shift(
            image_seq_len,
            base_seq_len=d.base_seq_len,
            max_seq_len=d.max_seq_len,
            base_shift=d.base_shift,
            max_shift=d.max_shift,
        )
    )


def add_noise(schedule: Schedule, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
    """The forward process: x_t = α(t)·x0 + σ(t)·noise, `t` a scalar or per-sample (B,) tensor."""
    alpha, sigma = (_bcast(v.to(x0.device), x0) for v in schedule.alpha_sigma(t))
    return alpha * x0 + sigma * noise


def first_order_step(schedule: Schedule, x_t, t, out, t_next) -> torch.Tensor:
    """One deterministic DDIM (η=0) / Euler step from time t to t_next given the network's native output.

    Written as x_next = α(t_next)·x̂0 + σ(t_next)·ε̂, which is DDIM for VP and exactly Euler on the velocity for
    flow matching. `t` and `t_next` are scalars or per-sample (B,) tensors.
    """
    x0, eps = schedule.to_x0_eps(x_t, t, out)
    alpha, sigma = (_bcast(v.to(x_t.device), x_t) for v in schedule.alpha_sigma(t_next))
    return alpha * x0 + sigma * eps


def check_close_grid(teacher_grid: torch.Tensor, student_grid: torch.Tensor) -> None:
    """Raise unless every student time is (to 1e-9) a teacher time — never the nearest teacher step."""
    for t in student_grid.tolist():
        if not any(math.isclose(t, u, abs_tol=1e-9) for u in teacher_grid.tolist()):
            raise UserError(
                f"the teacher grid does not contain student time {t}; use K solver sub-steps per student interval "
                f"so that every student time is a teacher time"
            )
