"""The R+G stage: one ARD regression step plus an adversarial term, in two phases (DESIGN.md §1, §2).

Every step, on every rank, in this order (the branch on `gan.warmup_steps` depends only on the step):

1. Generator phase. The student predicts all S next states (teacher forcing) as in the regression stage; its final
   prediction x̂0 is re-noised at a sampled time and passed through the feature backbone into the heads (eval mode,
   `requires_grad=False`: the phase leaves them exactly as they were). L_G's gradient g = ∂L_G/∂x̂0 is taken with
   `torch.autograd.grad` *with respect to x̂0 only*, and the student is updated on

       L_R + w · ⟨g, x̂0⟩        (⟨g, x̂0⟩ has gradient g at x̂0, so the student receives exactly w·∂L_G/∂θ via x̂0).

   Gradient control: the backbone (the student's own blocks by default) only carries g back to its input; its
   parameters get no gradient from the feature pass, and the pass runs on the student's live weights (no frozen
   snapshot, no extra memory). Under ZeRO-3 the backward of the feature pass fetches the backbone's shards through
   the blocks' module hooks like any backward, but it accumulates into no `.grad`, so no reduction hook fires
   outside `engine.backward`.
   w = 0 for the first `gan.warmup_steps` steps (the phase is skipped), then either `gan.weight` or the adaptive
   λ·clamp(‖∇_out L_R‖ / ‖∇_out L_G‖, 0, max) at the student's output activation `out` — never a (sharded)
   parameter — with both squared norms summed over ranks, which makes w the same on every rank and equal to the
   weight computed on the whole global batch on one rank.
2. Discriminator phase. Fakes (x̂0 detached) and reals (the batch's images through the VAE), re-noised the same
   way, go through the backbone under `no_grad` (the student is not touched), then the heads (train mode) give L_D
   (+ the approximate R1 penalty); the heads step with their own optimizer and LR (ReplicatedModule: gradients
   averaged over ranks, then zeroed). Each is judged under its own condition: the fakes under the trajectory's, the
   reals under their batch's (`real_condition`: the same unless `train.trajectory_source: replay` reused an earlier
   batch's trajectory).

The heads and their optimizer are checkpointed in the global client state with everything else; a GAN run can
start from a regression run's checkpoint (`gan.init_from`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ard_scale.config.training import GANConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import add_noise
from ard_scale.distributed.engines import step_student
from ard_scale.distributed.replicated import ReplicatedModule
from ard_scale.errors import UserError
from ard_scale.losses.gan import adaptive_weight, approximate_r1, discriminator_loss, generator_loss
from ard_scale.models.discriminator import Discriminator
from ard_scale.trainer.build import Run
from ard_scale.trainer.step import any_rank, mean_over_ranks, teacher_states
from ard_scale.utils.noise import Draws, Stream, noise_seed

RANK_BITS = 16  # the GAN stream's index is (step << RANK_BITS) | rank

Features = Callable[[torch.Tensor, torch.Tensor, Condition], list[torch.Tensor]]


@dataclass
class GANStage:
    cfg: GANConfig
    heads: ReplicatedModule  # .module is the Discriminator
    features: Features  # (x_t, t, cond) -> hidden states of the chosen backbone blocks
    seed: int  # train.seed: the key of the stage's noise stream

    @property
    def disc(self) -> Discriminator:
        return self.heads.module

    def freeze(self) -> None:
        """Generator phase: eval mode (spectral norm's power iteration does not advance), no gradients."""
        self.disc.eval().requires_grad_(False)

    def unfreeze(self) -> None:
        self.disc.train().requires_grad_(True)

    def state_dict(self) -> dict:
        return self.heads.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.heads.load_state_dict(state)


class DivergenceWatch:
    """The GAN stage's watchdog: the regression loss, smoothed (EMA, `smoothing`), against its smoothed value at the
    step the GAN term switched on. Past `factor` times that value it reports once (the metrics it reads are already
    averaged over ranks, so every rank decides the same). Its state goes into the checkpoint: a resume neither
    forgets the reference nor repeats the warning."""

    def __init__(self, factor: float | None, smoothing: float = 0.9):
        self.factor, self.smoothing = factor, smoothing
        self.smoothed: float | None = None
        self.reference: float | None = None
        self.fired_at: int | None = None

    def update(self, step: int, loss: float, gan_weight: float) -> str | None:
        """The warning text the first time the loss diverges, else None."""
        if self.factor is None or loss != loss or loss in (float("inf"), float("-inf")):
            return None
        self.smoothed = loss if self.smoothed is None else self.smoothing * self.smoothed + (1 - self.smoothing) * loss
        if self.reference is None:
            if gan_weight > 0:  # this step's loss was computed before the GAN term's first update
                self.reference = self.smoothed
            return None
        if self.fired_at is not None or self.smoothed <= self.factor * self.reference:
            return None
        self.fired_at = step
        return (
            f"the GAN stage is pulling the student off its teacher: at step {step} the regression loss (smoothed) is "
            f"{self.smoothed:.4g}, {self.smoothed / self.reference:.1f}× its {self.reference:.4g} when the GAN term "
            f"switched on (gan.divergence_factor={self.factor}; gan_weight now {gan_weight:.3g}). Lower "
            "gan.adaptive_lambda (or gan.weight), lower gan.d_lr, lengthen gan.warmup_steps, or start the GAN stage "
            "from a better-trained regression run; gan.stop_on_divergence=true stops here with a checkpoint"
        )

    def state_dict(self) -> dict:
        return {"smoothed": self.smoothed, "reference": self.reference, "fired_at": self.fired_at}

    def load_state_dict(self, state: dict) -> None:
        self.smoothed, self.reference, self.fired_at = state["smoothed"], state["reference"], state["fired_at"]


def backbone_features(run: Run, cfg: GANConfig) -> tuple[Features, list[int]]:
    """The feature function of the configured backbone and its block indices."""
    depth = run.teacher.depth  # the student's backbone is a copy of the teacher's: the same blocks
    layers = list(range(depth)) if cfg.layers is None else list(cfg.layers)
    if any(i >= depth for i in layers):
        raise UserError(f"gan.layers {layers}: the {cfg.backbone} backbone has blocks 0..{depth - 1}", every_rank=True)

    if cfg.backbone == "student":

        def features(x_t, t, cond):
            return run.student.features(x_t, t, cond, layers)

    else:

        def features(x_t, t, cond):
            # The (frozen, possibly ZeRO-3) teacher's blocks: its parameters never require grad, but the graph to
            # x_t is kept when x_t requires it (the generator phase).
            return run.teacher.features(x_t, run.schedule.model_time(t).to(x_t.device), cond, layers)

    return features, layers


def build_gan(run: Run, cfg: GANConfig, *, seed: int, grad_clip: float) -> GANStage:
    """The heads (replicated, own optimizer, clipped at `grad_clip`) and the feature function for `cfg`; `seed` keys
    the heads' initialisation and the stage's noise."""
    features, layers = backbone_features(run, cfg)
    torch.manual_seed(seed + 1)  # the heads' initialisation (then broadcast from rank 0 anyway)
    disc = Discriminator.for_teacher(run.teacher, num_heads=len(layers), hidden=cfg.head_hidden)
    disc.to(run.engine.device)
    heads = ReplicatedModule(disc, lr=cfg.d_lr, betas=cfg.d_betas, grad_clip=grad_clip)
    run.codec.to(run.engine.device)
    stage = GANStage(cfg=cfg, heads=heads, features=features, seed=seed)
    stage.freeze()
    return stage


# -- the pieces of a step (pure functions of their inputs: the tests run them on one rank without ZeRO) -------------
@dataclass
class GANNoise:
    """The step's draws, keyed on (seed, step, rank) in the GAN noise stream (disjoint from the trajectories')."""

    t_fake: torch.Tensor
    noise_fake: torch.Tensor
    t_real: torch.Tensor
    noise_real: torch.Tensor
    r1: torch.Tensor

    @staticmethod
    def draw(seed: int, step: int, rank: int, shape: tuple[int, ...], t_max: float, device) -> GANNoise:
        if not 0 <= rank < 2**RANK_BITS:
            raise UserError(f"rank {rank}: the GAN noise stream keys at most {2**RANK_BITS} ranks")
        g = Draws(noise_seed(Stream.GAN, seed, (step << RANK_BITS) | rank))
        B = shape[0]
        draws = [g.uniform((B,)) * t_max, g.normal(shape), g.uniform((B,)) * t_max, g.normal(shape), g.normal(shape)]
        return GANNoise(*(d.to(device) for d in draws))


def generator_gradient(
    features: Features, disc: Discriminator, schedule, x0_hat: torch.Tensor, cond: Condition, noise: GANNoise, kind
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_G, ∂L_G/∂x̂0, fake logits) with the backbone's and heads' parameters held fixed."""
    leaf = x0_hat.detach().requires_grad_(True)
    x_t = add_noise(schedule, leaf, noise.t_fake, noise.noise_fake)
    logits = disc(features(x_t, noise.t_fake, cond), cond)
    loss_g = generator_loss(logits, kind)
    (grad,) = torch.autograd.grad(loss_g, leaf)
    return loss_g.detach(), grad, logits.detach()


def gan_weight_sq_norms(
    student, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, out: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """[‖∇_out L_R‖², ‖∇_out L_G‖²] at the student's output activation `out`, this rank's part (L_G's gradient at
    x̂0 is `g`).

    Taken on a detached copy of `out` through the (cheap) next-state step and loss again, never by a backward
    into the engine's output itself: DeepSpeed hooks that tensor, and a backward reaching it outside
    `engine.backward` runs the engine's backward prologue/epilogue (ZeRO 0 refuses it, ZeRO 1-2 reduce an empty
    bucket)."""
    o = out.detach().requires_grad_(True)
    pred = student.next_states(inputs, o)
    loss_r, _ = loss_fn.from_predictions(pred, targets)
    (gr,) = torch.autograd.grad(loss_r, o, retain_graph=True)
    (gg,) = torch.autograd.grad((g.to(pred.dtype) * pred[:, -1]).sum(), o)
    return torch.stack([gr.float().pow(2).sum(), gg.float().pow(2).sum()])


def discriminator_step_loss(
    features: Features,
    disc: Discriminator,
    schedule,
    fake0: torch.Tensor,
    real0: torch.Tensor,
    cond: Condition,
    noise: GANNoise,
    cfg: GANConfig,
    real_cond: Condition | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_D [+ approximate R1], real logits, fake logits); the backbone runs without gradients. The fakes are judged
    under `cond`, the reals under `real_cond` (their own condition; default `cond`)."""
    real_cond = cond if real_cond is None else real_cond
    with torch.no_grad():
        x_fake = add_noise(schedule, fake0.detach(), noise.t_fake, noise.noise_fake)
        x_real = add_noise(schedule, real0, noise.t_real, noise.noise_real)
        f_fake = [f.detach() for f in features(x_fake, noise.t_fake, cond)]
        f_real = [f.detach() for f in features(x_real, noise.t_real, real_cond)]
        f_pert = None
        if cfg.r1_weight:
            x_pert = x_real + cfg.r1_sigma * noise.r1
            f_pert = [f.detach() for f in features(x_pert, noise.t_real, real_cond)]
    real_logits, fake_logits = disc(f_real, real_cond), disc(f_fake, cond)
    loss_d = discriminator_loss(real_logits, fake_logits, cfg.loss)
    if f_pert is not None:
        loss_d = loss_d + cfg.r1_weight * approximate_r1(real_logits, disc(f_pert, real_cond))
    return loss_d, real_logits.detach(), fake_logits.detach()


def real_condition(trajectories, conditioner, batch: dict[str, Any], cond: Condition) -> Condition:
    """The condition of the batch's real images: the trajectory's `cond`, unless the trajectory source replayed an
    earlier batch's trajectory (`train.trajectory_source: replay`), whose labels or captions are not these images'
    — then the batch's own, from `conditioner` (every rank alike: the replay cycle depends on the step only)."""
    if not trajectories.replayed:
        return cond
    return conditioner(batch)[0]


def real_latents(run: Run, batch: dict[str, Any], shape: tuple[int, ...], device) -> torch.Tensor:
    """The batch's real images encoded to latents, which must have the fakes' (C, H, W) `shape`."""
    images = batch.get("images")
    if images is None:
        raise UserError(
            "the GAN stage needs real images but this batch has none (trajectory or text-only data?); give image "
            "shards in data.path (the GAN reals) or disable gan.enabled"
        )
    latents = run.codec.encode(images.to(device))
    if tuple(latents.shape[1:]) != tuple(shape):
        raise UserError(
            f"real images of {tuple(images.shape[1:])} encode to {tuple(latents.shape[1:])}, but the teacher's states "
            f"are {tuple(shape)}: set data.resolution to the teacher's resolution (or use the teacher's VAE)"
        )
    return latents


# -- the step -----------------------------------------------------------------------------------------------------
@dataclass
class GeneratorPhase:
    out: torch.Tensor  # the student's head outputs (B, S, C_out, H, W)
    x0_hat: torch.Tensor  # its final prediction (B, C, H, W), still in the student's graph
    loss_r: torch.Tensor
    per_step: torch.Tensor
    loss_g: torch.Tensor
    weight: torch.Tensor
    total: torch.Tensor  # L_R + w·⟨∂L_G/∂x̂0, x̂0⟩, what the student's engine backpropagates


def generator_phase(
    run: Run, gan: GANStage, states: torch.Tensor, cond: Condition, noise: GANNoise, step: int
) -> GeneratorPhase:
    """The student's forward, L_R, and (after warm-up) the adversarial term and its weight. No backward yet."""
    cfg, engine, student = gan.cfg, run.engine, run.student
    inputs, targets = states[:, :-1], states[:, 1:]
    gan.freeze()
    out = engine(inputs, cond)
    pred = student.next_states(inputs, out)
    loss_r, per_step = run.loss_fn.from_predictions(pred, targets)
    x0_hat = pred[:, -1]
    loss_g = torch.zeros((), device=states.device)
    weight = torch.zeros((), device=states.device)
    total = loss_r
    if step >= cfg.warmup_steps:  # the same branch on every rank: it depends on the step only
        loss_g, g, _ = generator_gradient(gan.features, gan.disc, run.schedule, x0_hat, cond, noise, cfg.loss)
        surrogate = (g.to(x0_hat.dtype) * x0_hat).sum()
        if cfg.adaptive:
            sq = gan_weight_sq_norms(student, run.loss_fn, inputs, targets, out, g)
            if dist.is_initialized():
                dist.all_reduce(sq)
            weight = adaptive_weight(sq[0], sq[1], lam=cfg.adaptive_lambda, max_ratio=cfg.adaptive_max)
        else:
            weight = torch.tensor(cfg.weight, device=states.device)
        total = loss_r + weight.detach() * surrogate
    return GeneratorPhase(out, x0_hat, loss_r, per_step, loss_g, weight, total)


def discriminator_phase(
    run: Run,
    gan: GANStage,
    x0_hat: torch.Tensor,
    reals: torch.Tensor,
    cond: Condition,
    noise: GANNoise,
    skip: bool,
    real_cond: Condition | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One update of the heads on detached fakes (under `cond`) and re-noised reals (under `real_cond`, default
    `cond`). Returns (L_D, real logits, fake logits)."""
    gan.unfreeze()
    loss_d, real_logits, fake_logits = discriminator_step_loss(
        gan.features, gan.disc, run.schedule, x0_hat, reals, cond, noise, gan.cfg, real_cond
    )
    if not (skip or any_rank(not torch.isfinite(loss_d).item())):
        loss_d.backward()
        gan.heads.step()
    gan.heads.zero_grad()
    gan.freeze()
    return loss_d.detach(), real_logits, fake_logits


def gan_step(run: Run, gan: GANStage, batch: dict[str, Any], step: int) -> dict[str, Any]:
    """One R+G step (see the module docstring). Returns this step's metrics."""
    t0 = time.perf_counter()
    states, cond = teacher_states(run, batch, step)
    t1 = time.perf_counter()
    reals = real_latents(run, batch, tuple(states.shape[2:]), states.device)
    real_cond = real_condition(run.trajectories, run.conditioner, batch, cond)
    noise = GANNoise.draw(gan.seed, step, run.rank, tuple(reals.shape), run.schedule.t_max, states.device)

    g = generator_phase(run, gan, states, cond, noise, step)
    nan = any_rank(not (torch.isfinite(g.total).item() and torch.isfinite(g.loss_g).item()))
    grad_norm, lr = None, run.engine.get_lr()[0]  # the step's own: engine.step() advances the LR schedule
    if not nan:
        run.engine.backward(g.total)
        grad_norm = step_student(run.engine)  # a non-finite gradient is never stepped
    t2 = time.perf_counter()
    loss_d, real_logits, fake_logits = discriminator_phase(run, gan, g.x0_hat, reals, cond, noise, nan, real_cond)
    t3 = time.perf_counter()

    return {
        "step": step + 1,
        "loss": mean_over_ranks(g.loss_r).item(),
        "loss_per_step": mean_over_ranks(g.per_step).tolist(),
        "loss_g": mean_over_ranks(g.loss_g).item(),
        "loss_d": mean_over_ranks(loss_d).item(),
        "gan_weight": float(g.weight),
        "d_real": mean_over_ranks(real_logits.mean()).item(),
        "d_fake": mean_over_ranks(fake_logits.mean()).item(),
        "lr": lr,
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "teacher_s": t1 - t0,
        "student_s": t2 - t1,
        "discriminator_s": t3 - t2,
        "nan": nan or not math.isfinite(grad_norm),  # skipped: a NaN/Inf loss or gradient
    }
