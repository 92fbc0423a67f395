"""Fit a small teacher from scratch with its standard objective and save it as a diffusers folder.

    python launchers/fit_teacher.py [RECIPE] --out runs/teacher_digits [--steps N] [--family dit] [--objective flow]

Data: scikit-learn's 8x8 handwritten digits (1,797 real images, 10 classes) held in memory as a tensor, pixel space
(1 channel, [-1, 1]), optionally resized with `--resolution`. RECIPE (optional) only supplies defaults for
`teacher.family`, `teacher.size`, `diffusion.schedule` and `diffusion.prediction_type`; flags override it.

Objectives (`--objective`): VP 'epsilon' / 'v_prediction' (DDPM linear betas, t uniform over the 1000 steps;
loss ‖out − ε‖² or ‖out − (α·ε − σ·x0)‖², Ho et al. 2020 eq. 14 / Salimans & Ho 2022 §4) or 'flow'
(x_t = (1−t)·x0 + t·ε, t ~ U(0, 1), loss ‖out − (ε − x0)‖², Lipman et al. 2023 eq. 23). Learned-sigma channels get no
loss (the ODE ignores them). Conditions are dropped to the null condition 10 % of the time so CFG works. `dit`
conditions on the class; `pixart` on a fixed random 4-token "caption embedding" per class (a stand-in for T5, which
has no weights here; saved as captions.pt).

Writes OUT/transformer (diffusers `save_pretrained`, loads with `ard_scale.models.teachers.load_teacher`),
OUT/scheduler, OUT/fit.json (loss curve, sample class accuracy) and OUT/samples.png (one row per class, sampled
with the teacher trajectory generator). Sample quality: `sample_accuracy` is the fraction of generated samples
that a 5-nearest-neighbour classifier over the real digits assigns to their conditioning class (chance 0.1).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule  # noqa: E402
from ard_scale.diffusion.trajectory import teacher_trajectory  # noqa: E402
from ard_scale.models.condition import Condition  # noqa: E402
from ard_scale.models.teachers import Teacher, build_teacher  # noqa: E402

NUM_CLASSES = 10
CAPTION_TOKENS = 4


def load_digits(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, R, R) digits in [-1, 1] and (N,) labels."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x, torch.tensor(d.target, dtype=torch.long)


class Conditioner:
    """Class labels -> the family's Condition; index NUM_CLASSES is the null condition."""

    def __init__(self, family: str, caption_channels: int | None, seed: int = 0):
        self.family = family
        if family == "pixart":
            g = torch.Generator().manual_seed(seed)
            self.captions = torch.randn(NUM_CLASSES + 1, CAPTION_TOKENS, caption_channels, generator=g)

    def __call__(self, labels: torch.Tensor) -> Condition:
        if self.family == "dit":
            return Condition(labels=labels)
        return Condition(
            text=self.captions[labels], text_mask=torch.ones(len(labels), CAPTION_TOKENS, dtype=torch.long)
        )


def diffusion_loss(teacher: Teacher, schedule, x0: torch.Tensor, cond: Condition, gen: torch.Generator):
    """The standard denoising objective of the schedule's prediction type (see the module docstring)."""
    b = x0.shape[0]
    eps = torch.randn(x0.shape, generator=gen)
    if isinstance(schedule, FlowSchedule):
        t = torch.rand(b, generator=gen, dtype=torch.float64)
    else:
        t = torch.randint(0, schedule.num_train_timesteps, (b,), generator=gen).double()
    alpha, sigma = (v.float().reshape(-1, 1, 1, 1) for v in schedule.alpha_sigma(t))
    x_t = alpha * x0 + sigma * eps
    out = teacher.split_output(teacher(x_t, schedule.model_time(t), cond))
    target = {"epsilon": eps, "v_prediction": alpha * eps - sigma * x0, "flow": eps - x0}[schedule.prediction_type]
    return F.mse_loss(out, target)


@torch.no_grad()
def sample_classes(teacher, schedule, conditioner, shape, per_class: int, guidance: float, steps: int):
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    null = conditioner(torch.full_like(labels, NUM_CLASSES))
    tr = teacher_trajectory(
        teacher,
        schedule,
        conditioner(labels),
        null_cond=null,
        guidance_scale=guidance,
        latent_shape=shape,
        seeds=range(len(labels)),
        num_student_steps=1,
        substeps=steps,
    )
    return tr.final.clamp(-1, 1), labels


def sample_accuracy(samples: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor):
    """Fraction of samples that a 5-nearest-neighbour classifier over the real digits (at 8x8) puts in their class."""
    real_8, samples_8 = (F.adaptive_avg_pool2d(x, 8).flatten(1) for x in (real, samples))
    nearest = torch.cdist(samples_8, real_8).topk(5, largest=False).indices  # (N, 5)
    votes = F.one_hot(real_labels[nearest], NUM_CLASSES).sum(1)
    return float((votes.argmax(1) == labels).float().mean())


def save_grid(samples: torch.Tensor, per_class: int, path: Path) -> None:
    from PIL import Image

    x = ((samples[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # (N, R, R)
    r = x.shape[-1]
    grid = x.reshape(NUM_CLASSES, per_class, r, r).permute(0, 2, 1, 3).reshape(NUM_CLASSES * r, per_class * r)
    Image.fromarray(grid.numpy(), mode="L").resize((per_class * 32, NUM_CLASSES * 32), Image.NEAREST).save(path)


def recipe_defaults(path: Path | None) -> dict:
    if path is None:
        return {}
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    teacher, diffusion = raw.get("teacher", {}), raw.get("diffusion", {})
    out = {"family": teacher.get("family"), "size": teacher.get("size")}
    if diffusion.get("schedule") == "flow":
        out["objective"] = "flow"
    elif diffusion.get("prediction_type") in ("epsilon", "v_prediction"):
        out["objective"] = diffusion["prediction_type"]
    return {k: v for k, v in out.items() if v is not None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?", type=Path, help="recipe YAML supplying family/size/objective defaults")
    parser.add_argument("--out", type=Path, required=True, help="output folder (diffusers layout)")
    parser.add_argument("--family", choices=("dit", "pixart"))
    parser.add_argument("--size", help="named teacher size (default debug)")
    parser.add_argument("--objective", choices=("epsilon", "v_prediction", "flow"))
    parser.add_argument("--resolution", type=int, default=8, help="pixel resolution the digits are trained at")
    parser.add_argument("--width", type=int, default=64, help="transformer width D (heads of 32)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--sample-steps", type=int, default=24, help="DDIM/Euler steps for the sample grid")
    parser.add_argument("--guidance", type=float, default=1.5, help="guidance scale for the sample grid")
    args = parser.parse_args(argv)
    defaults = {"family": "dit", "size": "debug", "objective": "epsilon", **recipe_defaults(args.recipe)}
    family, size, objective = (getattr(args, k) or defaults[k] for k in ("family", "size", "objective"))

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load_digits(args.resolution)
    overrides = dict(
        in_channels=1,
        out_channels=2,
        sample_size=args.resolution,
        num_layers=args.layers,
        num_attention_heads=max(1, args.width // 32),
        attention_head_dim=min(32, args.width),
    )
    if family == "dit":
        overrides["num_embeds_ada_norm"] = NUM_CLASSES
    teacher = build_teacher(family, size, seed=args.seed, **overrides)
    teacher.requires_grad_(True).train()
    ema = copy.deepcopy(teacher).requires_grad_(False).eval()
    schedule = FlowSchedule() if objective == "flow" else VPSchedule(prediction_type=objective)
    conditioner = Conditioner(family, teacher.config.get("caption_channels"), seed=args.seed)
    opt = torch.optim.AdamW(teacher.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)

    losses, t0 = [], time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
        y = labels[idx].clone()
        if family != "dit":  # DiT's LabelEmbedding already drops 10 % of labels to the null class in train mode
            y[torch.rand(len(y), generator=gen) < 0.1] = NUM_CLASSES  # CFG dropout to the null condition
        lr = args.lr * min(1.0, (step + 1) / 100)  # linear warm-up
        for group in opt.param_groups:
            group["lr"] = lr
        loss = diffusion_loss(teacher, schedule, images[idx], conditioner(y), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), teacher.parameters(), strict=True):
                p_ema.lerp_(p, 1 - args.ema)
        losses.append(loss.item())
        if step % 250 == 0 or step == args.steps - 1:
            recent = sum(losses[-250:]) / len(losses[-250:])
            print(f"step {step:5d}  loss {recent:.4f}  {time.perf_counter() - t0:6.1f}s", flush=True)
    train_s = time.perf_counter() - t0

    per_class = 8
    shape = (1, args.resolution, args.resolution)
    samples, sample_labels = sample_classes(
        ema, schedule, conditioner, shape, per_class, args.guidance, args.sample_steps
    )
    acc = sample_accuracy(samples, sample_labels, images, labels)
    args.out.mkdir(parents=True, exist_ok=True)
    ema.model.save_pretrained(args.out / "transformer")
    if family == "pixart":
        torch.save(conditioner.captions, args.out / "captions.pt")
    _scheduler_for(schedule).save_pretrained(args.out / "scheduler")
    save_grid(samples, per_class, args.out / "samples.png")
    result = {
        "family": family,
        "objective": objective,
        "steps": args.steps,
        "train_seconds": train_s,
        "final_loss": sum(losses[-250:]) / len(losses[-250:]),
        "sample_accuracy": acc,
        "sample_guidance": args.guidance,
        "sample_steps": args.sample_steps,
    }
    (args.out / "fit.json").write_text(json.dumps({**result, "losses": losses[::10]}, indent=2))
    print(f"saved {args.out}  train {train_s:.0f}s  sample class accuracy {acc:.2f} (chance 0.10)")
    return result


def _scheduler_for(schedule):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    if isinstance(schedule, FlowSchedule):
        return FlowMatchEulerDiscreteScheduler(shift=schedule.shift)
    return DDIMScheduler(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        beta_schedule="linear",
        prediction_type=schedule.prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
    )


if __name__ == "__main__":
    main()
