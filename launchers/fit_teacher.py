"""Fit a small teacher from scratch with its standard objective and save it as a diffusers folder.

    python launchers/fit_teacher.py [RECIPE] --out runs/teacher_digits [--steps N] [--family dit] [--objective flow]
    python launchers/fit_teacher.py --data SHARDS --data-format mds --family pixart --resolution 16 --out ...

Data, by default: the bundled digits (scikit-learn's 1,797 8x8 handwritten digits, 10 classes, as
`ard_scale.data.bundled.load_digits` decodes them from the bundled shards at `--resolution`: the images a run on
`bundled:digits/*` trains on and takes as GAN reals), held in memory, pixel space (1 channel, [-1, 1]). With
`--data PATH --data-format webdataset|mds` (or `data.path`/`data.format` in RECIPE): batches of an image–class or
image–caption shard set from `ard_scale.data.build_loader` at `--resolution`, pixel space with `--channels` channels
(1: the mean over RGB). `dit` takes the shards' class labels (`--num-classes` of them); `pixart` takes the T5
embeddings the shards carry (t5_emb/t5_mask, see launchers/precompute_text.py) or encodes the captions with
`--text-encoder PATH`, both through the trainer's Conditioner (ard_scale/trainer/conditioning.py); its null
condition is the empty caption's embedding with `--text-encoder`, else a zero embedding with one valid token (written
as OUT/null_caption.pt either way, for launchers/dump_trajectories.py). RECIPE (optional; loaded and checked as the
trainer loads it) supplies defaults for `teacher.family`, `teacher.size`, `diffusion.schedule`,
`diffusion.prediction_type`, `data.path`, `data.format`, `data.resolution`; flags override it.

Objectives (`--objective`): VP 'epsilon' / 'v_prediction' (DDPM linear betas, t uniform over the 1000 steps;
loss ‖out − ε‖² or ‖out − (α·ε − σ·x0)‖², Ho et al. 2020 eq. 14 / Salimans & Ho 2022 §4) or 'flow'
(x_t = (1−t)·x0 + t·ε, t ~ U(0, 1), loss ‖out − (ε − x0)‖², Lipman et al. 2023 eq. 23). Learned-sigma channels get no
loss (the ODE ignores them). Conditions are dropped to the null condition 10 % of the time so CFG works. `dit`
conditions on the class; the text families (`pixart`, `flux`, `sd3`) on the digits on a fixed random 4-token
"caption embedding" per class, with a random pooled embedding where the family takes one (a stand-in for T5 and CLIP,
which have no weights here; saved as captions.pt, a dict of 'text' [, 'pooled']); FLUX's distilled guidance embedding
gets `--guidance`. On shards: `dit` and `pixart` only.

Writes OUT/transformer (diffusers `save_pretrained`, loads with `ard_scale.models.teachers.load_teacher`),
OUT/scheduler, OUT/fit.json (loss curve, sample class accuracy) and OUT/samples.png (one row per class, sampled
with the teacher trajectory generator), whole or not at all (`ard_scale.utils.folders.writing_folder`). OUT must be new
or empty, checked before the fit: a teacher already there is replaced only with `--overwrite` (a run distilled from it
would then resume against other weights). Sample quality: `sample_accuracy` is the fraction of generated samples
that a 5-nearest-neighbour classifier over the real digits assigns to their conditioning class (chance 0.1); it is
null for shard data (fit.json says why), whose samples.png has one row per condition of the first batch.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.config import RootConfig, load_config  # noqa: E402
from ard_scale.config.models import TextEncoderConfig  # noqa: E402
from ard_scale.data.bundled import load_digits  # noqa: E402
from ard_scale.diffusion.condition import Condition  # noqa: E402
from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule  # noqa: E402
from ard_scale.diffusion.trajectory import teacher_trajectory  # noqa: E402
from ard_scale.errors import UserError  # noqa: E402
from ard_scale.models.families import FAMILIES, get_family  # noqa: E402
from ard_scale.models.teachers import Teacher, build_teacher  # noqa: E402
from ard_scale.trainer.conditioning import Conditioner  # noqa: E402
from ard_scale.utils.cli import count, local_path, positive  # noqa: E402
from ard_scale.utils.folders import check_new_folder, writing_folder  # noqa: E402

NUM_CLASSES = 10
CAPTION_TOKENS = 4


class ClassConditioner:
    """Class labels -> the family's Condition; index NUM_CLASSES is the null condition. Text families get a fixed
    random "caption" per class in the shapes of the family's condition (T5 tokens, and a pooled embedding where the
    family takes one); a guidance-distilled teacher (FLUX.1-dev) also gets `guidance` as its embedded value."""

    def __init__(self, teacher: Teacher, seed: int = 0, guidance: float | None = None):
        self.kind = teacher.spec.condition_kind
        self.text_mask = teacher.spec.text_mask  # FLUX and SD3 attend to every token: no mask
        self.guidance = guidance if teacher.spec.guidance == "embedded" and teacher.distilled_guidance else None
        self.captions: dict[str, torch.Tensor] = {}
        if self.kind == "text":
            g = torch.Generator().manual_seed(seed)
            example = teacher.spec.example_condition(teacher.model, NUM_CLASSES + 1, "cpu", CAPTION_TOKENS)
            for name in ("text", "pooled"):
                value = getattr(example, name)
                if value is not None:
                    self.captions[name] = torch.randn(value.shape, generator=g)

    def __call__(self, labels: torch.Tensor) -> Condition:
        if self.kind == "labels":
            return Condition(labels=labels)
        text = self.captions["text"][labels]
        mask = torch.ones(text.shape[:2], dtype=torch.long) if self.text_mask else None
        guidance = None if self.guidance is None else torch.full((len(labels),), float(self.guidance))
        pooled = self.captions["pooled"][labels] if "pooled" in self.captions else None
        return Condition(text=text, text_mask=mask, pooled=pooled, guidance=guidance)


def shard_conditioner(teacher: Teacher, text_encoder: str | None, max_length: int, guidance: float) -> Conditioner:
    """The trainer's Conditioner on shard batches: class labels (dit), or the shards' T5 embeddings (t5_emb/t5_mask),
    or the captions encoded with a local T5 (pixart); with a T5, its null condition is the empty caption's."""
    sections = {"t5": TextEncoderConfig(path=text_encoder, max_length=max_length)}
    cfg_scale = guidance if text_encoder is not None else 1.0  # no encoder: no empty caption to encode
    return Conditioner(teacher, sections, guidance_scale=cfg_scale, keep_encoders=text_encoder is not None)


def zero_null(cond: Condition) -> Condition:
    """Without an encoder for the empty caption: a zero embedding with one valid token (an all-masked attention row is
    undefined), in the batch's shapes."""
    B, L, C = cond.text.shape
    mask = F.one_hot(torch.tensor(0), L).long().expand(B, -1)
    return Condition(text=torch.zeros(B, L, C), text_mask=mask)


def drop_to_null(cond: Condition, null: Condition, gen: torch.Generator) -> Condition:
    """CFG dropout: 10 % of text conditions become the null condition (DiT's label embedding drops its own)."""
    if cond.text is None:
        return cond
    drop_B = torch.rand(cond.batch_size, generator=gen) < 0.1
    return Condition(
        text=torch.where(drop_B[:, None, None], null.text, cond.text),
        text_mask=torch.where(drop_B[:, None], null.text_mask, cond.text_mask),
    )


def caption_channels(batch: dict, text_encoder: str | None, data_path: str) -> int:
    """The T5 width a pixart teacher on shards reads: the shards' embeddings', else the local T5's."""
    if "t5_emb" in batch:
        return int(batch["t5_emb"].shape[-1])
    if text_encoder is None:
        raise ValueError(
            f"the shards at {data_path} carry no T5 embeddings (t5_emb/t5_mask) for a pixart teacher: "
            "precompute them with launchers/precompute_text.py or pass --text-encoder PATH (a local T5 folder)"
        )
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(text_encoder).d_model)


def shard_batches(path: str, fmt: str, batch_size: int, resolution: int, seed: int):
    """Endless shuffled batches of a shard set through the data loader (one rank, no workers)."""
    from ard_scale.data import DataConfig, build_loader

    config = DataConfig(
        format=fmt, path=str(path), batch_size=batch_size, resolution=resolution, num_workers=0, seed=seed
    )
    return (batch for batch in build_loader(config, rank=0, world_size=1) if batch["keys"])  # MDS: all-bad is empty


def to_channels(images_B3HW: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB images -> the teacher's channels (1: the mean over RGB)."""
    return images_B3HW.mean(1, keepdim=True) if channels == 1 else images_B3HW


def select(cond: Condition, idx: torch.Tensor) -> Condition:
    return Condition(**{k: None if v is None else v[idx] for k, v in vars(cond).items()})


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


def fit_step(teacher: Teacher, ema: Teacher, opt, schedule, x0, cond: Condition, gen, *, lr: float, ema_decay: float):
    """One AdamW step of the standard objective at `lr` (gradients clipped at norm 1), then the EMA update of `ema`.
    Returns the step's loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss = diffusion_loss(teacher, schedule, x0, cond, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), teacher.parameters(), strict=True):
            p_ema.lerp_(p, 1 - ema_decay)
    return loss.item()


@torch.no_grad()
def sample_classes(teacher, schedule, conditioner, shape, per_class: int, guidance: float, steps: int):
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    null = conditioner(torch.full_like(labels, NUM_CLASSES))
    if conditioner.guidance is not None:  # guidance-distilled: the value is embedded in the condition, no null pass
        null, guidance = None, 1.0
    return sample(teacher, schedule, conditioner(labels), null, shape, guidance, steps), labels


@torch.no_grad()
def sample(teacher, schedule, cond: Condition, null: Condition, shape, guidance: float, steps: int) -> torch.Tensor:
    """Final states of guided teacher trajectories, seeds 0..B-1, clamped to the pixel range."""
    tr = teacher_trajectory(
        teacher,
        schedule,
        cond,
        null_cond=null,
        guidance_scale=guidance,
        latent_shape=shape,
        seeds=range(cond.batch_size),
        num_student_steps=1,
        substeps=steps,
        guide=teacher.spec.guide,  # the family's CFG combination, as its pipeline (Qwen-Image rescales the norm)
    )
    return tr.final.clamp(-1, 1)


def sample_accuracy(samples: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor):
    """Fraction of samples that a 5-nearest-neighbour classifier over the real digits (at 8x8) puts in their class."""
    real_8, samples_8 = (F.adaptive_avg_pool2d(x, 8).flatten(1) for x in (real, samples))
    nearest = torch.cdist(samples_8, real_8).topk(5, largest=False).indices  # (N, 5)
    votes = F.one_hot(real_labels[nearest], NUM_CLASSES).sum(1)
    return float((votes.argmax(1) == labels).float().mean())


def save_grid(samples: torch.Tensor, per_class: int, path: Path, num_rows: int = NUM_CLASSES) -> None:
    """(num_rows * per_class, C, R, R) samples in [-1, 1] -> a PNG, one row per condition (C = 1 or 3)."""
    from PIL import Image

    x = ((samples + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # (N, C, R, R)
    c, r = x.shape[1], x.shape[-1]
    grid = x.reshape(num_rows, per_class, c, r, r).permute(0, 3, 1, 4, 2).reshape(num_rows * r, per_class * r, c)
    image = Image.fromarray(grid[..., 0].numpy(), mode="L") if c == 1 else Image.fromarray(grid.numpy(), mode="RGB")
    image.resize((per_class * 32, num_rows * 32), Image.NEAREST).save(path)


def recipe_defaults(cfg: RootConfig | None) -> dict:
    """The fit's settings a loaded (validated) recipe gives: its teacher family and size, the objective of its
    diffusion section and its data."""
    if cfg is None:
        return {}
    d = cfg.diffusion
    out = {"family": cfg.teacher.family, "size": cfg.teacher.size, "resolution": cfg.data.resolution}
    out["objective"] = "flow" if d.schedule == "flow" else d.prediction_type
    out.update(data=cfg.data.path, data_format=cfg.data.format)
    return {k: v for k, v in out.items() if v is not None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "recipe", nargs="?", type=local_path, help="recipe YAML supplying family/size/objective defaults"
    )
    parser.add_argument("--out", type=local_path, required=True, help="output folder (diffusers layout): new or empty")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a teacher already in --out (runs distilled from it change)"
    )
    parser.add_argument("--family", choices=sorted(FAMILIES))
    parser.add_argument("--size", help="named teacher size (default debug)")
    parser.add_argument("--objective", choices=("epsilon", "v_prediction", "flow"))
    parser.add_argument("--resolution", type=count(), help="pixel resolution (default: the recipe's, else 8)")
    parser.add_argument("--data", help="a shard set (folder) to train on instead of the in-memory digits")
    parser.add_argument("--data-format", choices=("webdataset", "mds"), help="format of --data")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1, help="image channels (1: mean over RGB)")
    parser.add_argument("--num-classes", type=count(), default=NUM_CLASSES, help="dit on shards: class labels 0..N-1")
    parser.add_argument("--text-encoder", help="pixart on shards: local T5 folder to encode the captions with")
    parser.add_argument("--max-length", type=count(), default=120, help="T5 tokens per caption with --text-encoder")
    parser.add_argument("--width", type=count(), default=64, help="transformer width D (heads of 32)")
    parser.add_argument("--layers", type=count(), default=4)
    parser.add_argument("--steps", type=count(), default=2000)
    parser.add_argument("--batch-size", type=count(), default=64)
    parser.add_argument("--lr", type=positive, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=count(), help="torch CPU threads (default 1: fastest for debug-size models)")
    parser.add_argument("--sample-steps", type=count(), default=24, help="DDIM/Euler steps for the sample grid")
    parser.add_argument(
        "--guidance", type=float, default=1.5, help="guidance scale for the sample grid (FLUX: the embedded value)"
    )
    args = parser.parse_args(argv)
    if not args.overwrite:  # before the fit, not after it
        check_out(args.out)
    cfg = load_config(args.recipe) if args.recipe is not None else None  # checked as the trainer checks it
    defaults = {"family": "dit", "size": "debug", "objective": "epsilon", "resolution": 8, **recipe_defaults(cfg)}
    family, size, objective = (getattr(args, k) or defaults[k] for k in ("family", "size", "objective"))
    args.resolution = args.resolution or defaults["resolution"]
    kind = get_family(family).condition_kind
    data_path, data_format = args.data or defaults.get("data"), args.data_format or defaults.get("data_format")
    if data_path is not None and data_format is None:
        parser.error(f"give --data-format webdataset|mds for --data {data_path}")
    if data_path is not None and get_family(family).text_encoders not in ((), ("t5",)):
        parser.error(
            f"--family {family} fits on the in-memory digits only (its condition needs pooled CLIP embeddings the "
            "shard path does not build); leave out --data, or fit a dit/pixart teacher on shards"
        )
    if args.text_encoder is not None and (kind != "text" or data_path is None):
        warnings.warn("--text-encoder is ignored: it encodes the shard captions of a pixart teacher", stacklevel=1)

    threads = args.threads or 1
    torch.set_num_threads(threads)
    print(
        f"fit_teacher: {threads} CPU thread(s)"
        + ("" if args.threads else " (debug-size models run fastest on one; --threads N for more)"),
        flush=True,
    )
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    overrides = {}
    if data_path is None:
        images, labels = load_digits(args.resolution)
        images = images.expand(-1, args.channels, -1, -1)
        conditioner = None  # built with the teacher (it needs the condition's shapes)

        def next_batch() -> tuple[torch.Tensor, Condition]:
            idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
            y = labels[idx].clone()
            if kind != "labels":  # DiT's LabelEmbedding already drops 10 % of labels to the null class in train mode
                y[torch.rand(len(y), generator=gen) < 0.1] = NUM_CLASSES  # CFG dropout to the null condition
            return images[idx], conditioner(y)
    else:
        stream = shard_batches(data_path, data_format, args.batch_size, args.resolution, args.seed)
        first = next(stream)
        if kind == "text":
            overrides["caption_channels"] = caption_channels(first, args.text_encoder, data_path)
        stream = itertools.chain([first], stream)
        conditioner = None  # the trainer's, built with the teacher

        def next_batch() -> tuple[torch.Tensor, Condition]:
            batch = next(stream)
            cond, null = conditioner(batch)
            return to_channels(batch["images"], args.channels), drop_to_null(cond, null or zero_null(cond), gen)

    overrides.update(
        num_layers=args.layers,
        **get_family(family).pixel_overrides(args.channels, args.resolution),
        **get_family(family).width_overrides(args.width),
    )
    overrides.update(get_family(family).size_overrides(args.num_classes if data_path is not None else NUM_CLASSES))
    teacher = build_teacher(family, size, seed=args.seed, **overrides)
    teacher.requires_grad_(True).train()
    ema = copy.deepcopy(teacher).requires_grad_(False).eval()
    schedule = FlowSchedule() if objective == "flow" else VPSchedule(prediction_type=objective)
    if data_path is None:
        conditioner = ClassConditioner(teacher, seed=args.seed, guidance=args.guidance)
    else:
        conditioner = shard_conditioner(teacher, args.text_encoder, args.max_length, args.guidance)
        first_cond, first_null = conditioner(first)
        if kind == "text":
            first_null = first_null or zero_null(first_cond)
    opt = torch.optim.AdamW(teacher.parameters(), lr=args.lr, weight_decay=0.0)

    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(args.steps), desc="fit_teacher", unit="step", mininterval=2.0, file=sys.stderr)
    for step in bar:
        x0, cond = next_batch()
        lr = args.lr * min(1.0, (step + 1) / 100)  # linear warm-up
        losses.append(fit_step(teacher, ema, opt, schedule, x0, cond, gen, lr=lr, ema_decay=args.ema))
        if step % 25 == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-250:]) / len(losses[-250:]):.4f}")
    train_s = time.perf_counter() - t0

    per_class = 8
    shape = (args.channels, args.resolution, args.resolution)
    if data_path is None:
        samples, sample_labels = sample_classes(
            ema, schedule, conditioner, shape, per_class, args.guidance, args.sample_steps
        )
        acc, num_rows = sample_accuracy(samples, sample_labels, images, labels), NUM_CLASSES
    else:  # one row per condition of the first batch (at most 8)
        num_rows = min(8, first_cond.batch_size)
        rows = torch.arange(num_rows).repeat_interleave(per_class)
        cond, null = select(first_cond, rows), select(first_null, rows)
        samples = sample(ema, schedule, cond, null, shape, args.guidance, args.sample_steps)
        acc = None
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
    if data_path is not None:
        result["data"] = {"path": str(data_path), "format": data_format}
        result["sample_accuracy_note"] = "not computed: the 5-NN class check applies to the in-memory digits only"
    # whole or not at all: launchers/demo.py reuses the folder of a teacher that has transformer/config.json
    with writing_folder(args.out, what="fitted teacher", replace=args.overwrite) as out:
        ema.model.save_pretrained(out / "transformer")
        if kind == "text" and data_path is None:
            torch.save(conditioner.captions, out / "captions.pt")
        elif kind == "text":
            torch.save({"t5_emb": first_null.text[0], "t5_mask": first_null.text_mask[0]}, out / "null_caption.pt")
        _scheduler_for(schedule).save_pretrained(out / "scheduler")
        save_grid(samples, per_class, out / "samples.png", num_rows)
        (out / "fit.json").write_text(json.dumps({**result, "losses": losses[::10]}, indent=2))
    quality = "" if acc is None else f"  sample class accuracy {acc:.2f} (chance 0.10)"
    print(f"saved {args.out}  train {train_s:.0f}s{quality}")
    return result


def check_out(out: Path) -> None:
    """Refuse an --out that holds files: a run distilled from the teacher there would resume against other weights."""
    try:
        check_new_folder(out, "fitted teacher")
    except UserError as e:
        raise UserError(
            f"{e}; --overwrite replaces it, but a run distilled from the teacher there then resumes against other "
            "weights"
        ) from None


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
    try:
        main()
    except ValueError as e:  # a bad recipe (ConfigError), path or source: its cause and fix, without a traceback
        sys.exit(f"error: {e}")
