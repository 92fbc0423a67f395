"""Fidelity benchmark (issue 19): does step distillation (N=0) drift from its teacher more than ARD (N>0), and does
the GAN stage (R+G) improve on R? Everything runs in one process, in plain PyTorch, with the package's own pieces.

    python bench/fidelity.py --json bench/results/fidelity_cpu.json --plot bench/results/fidelity.png
    python bench/fidelity.py --device cuda --resolution 32 --width 128 --layers 8 --student-steps 4000 ...  # GPU

Data: scikit-learn's 8x8 digits (1,797 real images, 10 classes), upsampled to `--resolution` (default 16: 64 tokens
of patch 2, so four groups hold 256 tokens and history has something to carry) and augmented by a fixed random
affine (rotation, scale, shift) per copy. Why not scikit-image's natural images: scikit-image is not in the pinned
environment. The digits are split once into a training part (teacher, students, GAN reals, classifier) and a held-out
part (the Fréchet reference), and both are augmented with their own fixed draws.

Pieces, in order (each cached where it is expensive):
1. A small CNN classifier on the augmented training digits: its penultimate features define the Fréchet distance
   (ard_scale.evaluation.fid.frechet_distance) and its argmax the class accuracy.
2. The teacher: a `dit` of `--width`/`--layers`, fit with launchers/fit_teacher.py's objective (`diffusion_loss`),
   EMA, saved with `save_pretrained` and reloaded from `--teacher-path` if it is already there.
3. A pool of teacher trajectories on the student grid (S steps, K sub-steps each, guidance w), from the TRAIN noise
   stream, shared by every student: identical data for N=0 and ARD.
4. Students `ARDStudent(teacher, ARDConfig(num_causal_layers=N, mask=M))` trained on `RegressionLoss` with identical
   seeds (batch order), steps, LR; one per (variant, seed).
5. From each seed's ARD R student: R continued for `--gan-steps` against R+G for the same steps, the generator and
   discriminator phases of ard_scale/trainer/gan.py (`generator_phase`, `discriminator_phase`) on a one-process
   stand-in for the trainer's Run; reals are augmented training digits of the batch's classes.
6. Metrics on the EVAL noise stream (`eval_seeds`, never training noise), classes cycling 0..9: the teacher's own
   S·K-step samples, and per student: MSE to the teacher's sample from the same noise, the Fréchet distance to the
   held-out reals in classifier features, class accuracy. Degradation = student − teacher.

JSON: every figure, with `degradation_ratio` (FD degradation of N=0 over ARD's, median over seeds) and
`gan_fd_minus_r_fd` (R+G's FD − R continued's, median over seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ard_scale.config.ard import ARDConfig  # noqa: E402
from ard_scale.config.training import GANConfig  # noqa: E402
from ard_scale.diffusion.condition import Condition  # noqa: E402
from ard_scale.diffusion.schedules import VPSchedule  # noqa: E402
from ard_scale.diffusion.trajectory import draw_noise, teacher_trajectory  # noqa: E402
from ard_scale.distributed.replicated import ReplicatedModule  # noqa: E402
from ard_scale.evaluation.fid import frechet_distance  # noqa: E402
from ard_scale.losses.regression import RegressionLoss  # noqa: E402
from ard_scale.models.discriminator import Discriminator  # noqa: E402
from ard_scale.models.families import get_family  # noqa: E402
from ard_scale.models.student import ARDStudent  # noqa: E402
from ard_scale.models.teachers import build_teacher, load_teacher  # noqa: E402
from ard_scale.trainer.gan import (  # noqa: E402
    GANNoise,
    GANStage,
    backbone_features,
    discriminator_phase,
    generator_phase,
)
from ard_scale.utils.noise import Stream, eval_seeds, noise_seed  # noqa: E402
from launchers.fit_teacher import fit_step  # noqa: E402

NUM_CLASSES = 10


@dataclass
class Settings:
    """The benchmark's sizes; the CLI flags are these fields."""

    resolution: int = 16
    copies: int = 8  # augmented copies of each training digit
    width: int = 64
    layers: int = 4
    teacher_steps: int = 3000
    teacher_lr: float = 1e-3
    classifier_steps: int = 600
    student_steps: int = 4  # S
    substeps: int = 8  # K: the teacher takes S·K DDIM steps
    guidance: float = 3.0
    num_causal_layers: int = 2  # N of the ARD student
    masks: list[str] = field(default_factory=lambda: ["causal"])
    pool: int = 1024  # teacher trajectories shared by every student
    train_steps: int = 300  # student regression steps
    batch_size: int = 32
    lr: float = 1e-4
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    gan_steps: int = 100
    gan: dict = field(default_factory=dict)  # GANConfig overrides for the R+G arm (warmup_steps is always 0)
    gan_sweep: list[dict] = field(default_factory=list)  # extra R+G arms on the first seed, each {field: value}
    samples: int = 1000
    eval_batch: int = 250
    device: str = "cpu"
    teacher_path: str | None = None
    baseline_only: bool = False  # train and score N=0 only: how the regime is chosen (before ARD is ever measured)


# -- data ------------------------------------------------------------------------------------------------------------
def augmented_digits(s: Settings) -> dict[str, torch.Tensor]:
    """Train/held-out split (80/20, fixed), upsampled to s.resolution, each image augmented by fixed affines:
    `copies` per training digit, 2 per held-out digit. Pixel values in [-1, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 * 2 - 1
    y = torch.tensor(d.target, dtype=torch.long)
    x = F.interpolate(x, size=(s.resolution, s.resolution), mode="bilinear", align_corners=False)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    cut = int(0.8 * len(x))
    out = {}
    for name, idx, copies, seed in (("train", perm[:cut], s.copies, 1), ("held", perm[cut:], 2, 2)):
        xs, ys = x[idx].repeat(copies, 1, 1, 1), y[idx].repeat(copies)
        out[f"{name}_x"], out[f"{name}_y"] = random_affine(xs, torch.Generator().manual_seed(seed)), ys
    return out


def random_affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rotation ±15°, scale 0.85–1.15, shift ±12 % per image, background −1 (the digits' own)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(15)
    scale = 0.85 + 0.3 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.24  # affine_grid units: the image spans [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


# -- the feature network -----------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """A small CNN; `features` (64-d, before the last layer) are the Fréchet distance's space."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, 64), nn.ReLU(),
        )  # fmt: skip
        self.out = nn.Linear(64, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.clamp(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def fit_classifier(data: dict, s: Settings) -> tuple[Classifier, float]:
    """Trained on the augmented training digits; returns it (eval mode) and its held-out accuracy."""
    torch.manual_seed(0)
    net = Classifier().to(s.device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    x, y = data["train_x"].to(s.device), data["train_y"].to(s.device)
    for _ in range(s.classifier_steps):
        idx = torch.randint(0, len(x), (128,), generator=gen).to(s.device)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        acc = (net(data["held_x"].to(s.device)).argmax(1).cpu() == data["held_y"]).float().mean().item()
    return net, acc


def gaussian(features_NF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f = features_NF.double().cpu()
    return f.mean(0), torch.cov(f.T)


# -- teacher --------------------------------------------------------------------------------------------------------
def get_teacher(data: dict, s: Settings, schedule: VPSchedule):
    """The cached teacher at s.teacher_path, else a fresh fit (saved there when a path is given)."""
    if s.teacher_path and (Path(s.teacher_path) / "config.json").is_file():
        return load_teacher(s.teacher_path).to(s.device), {"cached": s.teacher_path}
    spec = get_family("dit")
    overrides = {**spec.pixel_overrides(1, s.resolution), **spec.width_overrides(s.width)}
    teacher = build_teacher("dit", "debug", seed=0, num_layers=s.layers, **overrides, **spec.size_overrides(10))
    teacher.to(s.device).requires_grad_(True).train()
    ema = copy.deepcopy(teacher).requires_grad_(False).eval()
    opt = torch.optim.AdamW(teacher.parameters(), lr=s.teacher_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    x, y = data["train_x"], data["train_y"]
    t0, losses = time.perf_counter(), []
    for step in range(s.teacher_steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        lr = s.teacher_lr * min(1.0, (step + 1) / 100)
        # DiT's label embedding drops 10 % of the labels to the null class in train mode (CFG training).
        x0, cond = x[idx].to(s.device), Condition(labels=y[idx].to(s.device))
        losses.append(fit_step(teacher, ema, opt, schedule, x0, cond, gen, lr=lr, ema_decay=0.995))
    if s.teacher_path:
        ema.model.save_pretrained(s.teacher_path)
    tail = losses[-100:]
    return ema, {"fit_seconds": time.perf_counter() - t0, "final_loss": sum(tail) / max(1, len(tail))}


def trajectories(teacher, schedule, s: Settings, seeds: list[int], labels: torch.Tensor) -> torch.Tensor:
    """(B, S+1, 1, R, R) guided teacher states on the student grid, S·K DDIM steps, in batches."""
    out = []
    for i in range(0, len(seeds), s.eval_batch):
        y = labels[i : i + s.eval_batch].to(s.device)
        tr = teacher_trajectory(
            teacher, schedule, Condition(labels=y), null_cond=teacher.null_condition(len(y), s.device),
            guidance_scale=s.guidance, latent_shape=(1, s.resolution, s.resolution), seeds=seeds[i : i + s.eval_batch],
            num_student_steps=s.student_steps, substeps=s.substeps, device=s.device,
        )  # fmt: skip
        out.append(tr.states)
    return torch.cat(out)


# -- students -------------------------------------------------------------------------------------------------------
def make_student(teacher, schedule, s: Settings, n: int, mask: str) -> ARDStudent:
    cfg = ARDConfig(num_steps=s.student_steps, num_causal_layers=n, mask=mask)
    return ARDStudent(teacher, cfg, schedule, latent_shape=(1, s.resolution, s.resolution)).to(s.device)


def train_regression(student, pool, s: Settings, seed: int, steps: int, start: int = 0) -> list[float]:
    """`steps` AdamW steps on RegressionLoss over the shared pool; the batch order is keyed on (seed, step)."""
    states, labels = pool
    loss_fn = RegressionLoss(s.student_steps)
    opt = torch.optim.AdamW(student.parameters(), lr=s.lr, weight_decay=0.0)
    losses = []
    student.train()
    for step in range(start, start + steps):
        idx = batch_indices(len(labels), s.batch_size, seed, step)
        loss, _ = loss_fn(student, states[idx].to(s.device), Condition(labels=labels[idx].to(s.device)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    return torch.randint(0, n, (batch,), generator=small_generator(seed, step))


def small_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A CPU generator keyed on (seed, step) inside 32 bits: torch's CPU Mersenne Twister keeps only a seed's low
    32 bits, so the key is packed below bit 32."""
    assert 0 <= seed < 2**10 and 0 <= step < 2**20 and salt in (0, 1)
    return torch.Generator().manual_seed((salt << 31) | (seed << 20) | step)


def train_gan(student, teacher, schedule, pool, data, s: Settings, seed: int, start: int) -> list[dict]:
    """`s.gan_steps` R+G steps with the trainer's generator and discriminator phases (no warm-up)."""
    cfg = GANConfig(**{**s.gan, "enabled": True, "warmup_steps": 0})
    loss_fn = RegressionLoss(s.student_steps)
    run = SimpleNamespace(student=student, engine=student, teacher=teacher, schedule=schedule, loss_fn=loss_fn)
    features, layers = backbone_features(run, cfg)
    torch.manual_seed(seed + 1)
    disc = Discriminator.for_teacher(teacher, num_heads=len(layers), hidden=cfg.head_hidden).to(s.device)
    gan = GANStage(
        cfg=cfg,
        heads=ReplicatedModule(disc, lr=cfg.d_lr, betas=cfg.d_betas, grad_clip=1.0),
        features=features,
        seed=seed,
    )
    opt = torch.optim.AdamW(student.parameters(), lr=s.lr, weight_decay=0.0)
    states, labels = pool
    by_class = [torch.nonzero(data["train_y"] == c).flatten() for c in range(NUM_CLASSES)]
    log = []
    student.train()
    for step in range(start, start + s.gan_steps):
        idx = batch_indices(len(labels), s.batch_size, seed, step)
        y = labels[idx]
        g = small_generator(seed, step, salt=1)
        real_idx = torch.stack([by_class[c][torch.randint(0, len(by_class[c]), (1,), generator=g)][0] for c in y])
        reals = data["train_x"][real_idx].to(s.device)
        cond = Condition(labels=y.to(s.device))
        noise = GANNoise.draw(seed, step, 0, tuple(reals.shape), schedule.t_max, s.device)
        phase = generator_phase(run, gan, states[idx].to(s.device), cond, noise, step)
        opt.zero_grad(set_to_none=True)
        phase.total.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        loss_d, real_logits, fake_logits = discriminator_phase(run, gan, phase.x0_hat, reals, cond, noise, skip=False)
        log.append({
            "loss_r": phase.loss_r.item(), "loss_d": loss_d.item(), "weight": float(phase.weight),
            "d_real": real_logits.mean().item(), "d_fake": fake_logits.mean().item(),
        })  # fmt: skip
    return log


# -- metrics --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def student_samples(student, s: Settings, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    student.eval()
    out = [
        student.sample(
            noise[i : i + s.eval_batch].to(s.device), Condition(labels=labels[i : i + s.eval_batch].to(s.device))
        )
        for i in range(0, len(labels), s.eval_batch)
    ]
    return torch.cat(out).cpu()


@torch.no_grad()
def score(samples, labels, teacher_samples, classifier, reference) -> dict[str, float]:
    """MSE to the teacher's samples from the same noise, Fréchet distance to the held-out reals in classifier
    features (and to the teacher's samples: how far the distribution moved from the teacher's), class accuracy."""
    device = next(classifier.parameters()).device
    feats, logits = [], []
    for i in range(0, len(samples), 500):
        f = classifier.features(samples[i : i + 500].to(device))
        feats.append(f.cpu())
        logits.append(classifier.out(f).cpu())
    mu, sigma = gaussian(torch.cat(feats))
    teacher_mu, teacher_sigma = gaussian(classifier.features(teacher_samples.to(device)))
    return {
        "mse": float((samples.float() - teacher_samples.float()).pow(2).mean()),
        "fd": frechet_distance(mu, sigma, *reference),
        "fd_to_teacher": frechet_distance(mu, sigma, teacher_mu, teacher_sigma),
        "accuracy": float((torch.cat(logits).argmax(1) == labels).float().mean()),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
    }


# -- the run --------------------------------------------------------------------------------------------------------
def run(s: Settings, log=print) -> dict:
    t_start = time.perf_counter()
    schedule = VPSchedule()
    data = augmented_digits(s)
    classifier, held_acc = fit_classifier(data, s)
    reference = gaussian(torch.cat([classifier.features(b.to(s.device)).cpu() for b in data["held_x"].split(500)]))
    real_scores = score(data["held_x"][: s.samples], data["held_y"][: s.samples], data["held_x"][: s.samples],
                        classifier, reference)  # fmt: skip
    train_half = data["train_x"][: s.samples]
    real_scores["fd_train_vs_held"] = score(
        train_half, data["train_y"][: s.samples], train_half, classifier, reference
    )["fd"]
    log(f"classifier held-out accuracy {held_acc:.3f}; reals FD {real_scores['fd_train_vs_held']:.3f}")

    teacher, teacher_info = get_teacher(data, s, schedule)
    teacher.eval().requires_grad_(False)
    pool_labels = torch.arange(s.pool) % NUM_CLASSES
    pool_seeds = [noise_seed(Stream.TRAIN, 0, i) for i in range(s.pool)]
    ev_seeds, ev_labels = eval_seeds(s.samples), torch.arange(s.samples) % NUM_CLASSES
    # disjoint seeds draw different noise: utils.noise.Draws keys every bit of a seed (torch's CPU generator keeps 32)
    assert not set(pool_seeds) & set(ev_seeds), "training noise would be eval noise"
    pool = (trajectories(teacher, schedule, s, pool_seeds, pool_labels).cpu(), pool_labels)
    ev_states = trajectories(teacher, schedule, s, ev_seeds, ev_labels).cpu()
    noise, teacher_final = ev_states[:, 0], ev_states[:, -1]
    assert torch.equal(noise, draw_noise(ev_seeds, (1, s.resolution, s.resolution)))
    teacher_scores = score(teacher_final, ev_labels, teacher_final, classifier, reference)
    log(f"teacher ({s.student_steps * s.substeps} DDIM steps, w={s.guidance}): {teacher_scores}  "
        f"[{time.perf_counter() - t_start:.0f}s]")  # fmt: skip

    variants = {"N0": (0, "causal")}
    if not s.baseline_only:
        variants |= {f"N{s.num_causal_layers}_{m}": (s.num_causal_layers, m) for m in s.masks}
    ard_name = f"N{s.num_causal_layers}_{s.masks[0]}"
    students: dict[str, list[dict]] = {name: [] for name in variants}
    ard_students = {}
    for seed in s.seeds:
        for name, (n, mask) in variants.items():
            student = make_student(teacher, schedule, s, n, mask)
            losses = train_regression(student, pool, s, seed, s.train_steps)
            sc = score(student_samples(student, s, noise, ev_labels), ev_labels, teacher_final, classifier, reference)
            sc |= {"seed": seed, "final_loss": sum(losses[-20:]) / len(losses[-20:])}
            sc["degradation_fd"] = sc["fd"] - teacher_scores["fd"]
            sc["degradation_fd_to_teacher"] = sc["fd_to_teacher"]
            sc["degradation_accuracy"] = teacher_scores["accuracy"] - sc["accuracy"]
            students[name].append(sc)
            if name == ard_name:
                ard_students[seed] = student
            log(f"seed {seed} {name}: {sc}  [{time.perf_counter() - t_start:.0f}s]")

    gan_rows, sweep_rows = [], []
    if s.gan_steps > 0 and ard_students:

        def evaluate(student):
            return score(student_samples(student, s, noise, ev_labels), ev_labels, teacher_final, classifier, reference)

        for seed, student in ard_students.items():
            r_cont = copy.deepcopy(student)
            train_regression(r_cont, pool, s, seed, s.gan_steps, start=s.train_steps)
            r_sc = evaluate(r_cont)
            arms = [{}] + (s.gan_sweep if seed == s.seeds[0] else [])
            for arm in arms:  # {} = the run's own GAN settings; then one changed factor per arm
                rg = copy.deepcopy(student)
                gan_log = train_gan(rg, teacher, schedule, pool, data, replace(s, gan={**s.gan, **arm}), seed,
                                    start=s.train_steps)  # fmt: skip
                g_sc = evaluate(rg)
                trace = {k: [row[k] for row in gan_log[:: max(1, len(gan_log) // 10)]] for k in gan_log[0]}
                row = {"seed": seed, "gan": arm, "r": r_sc, "rg": g_sc, "fd_minus": g_sc["fd"] - r_sc["fd"],
                       "trace": trace}  # fmt: skip
                (sweep_rows if arm else gan_rows).append(row)
                log(f"seed {seed} GAN {arm or 'run settings'}: R {r_sc}  R+G {g_sc}  weight {trace['weight'][-1]:.3g} "
                    f"loss_d {trace['loss_d'][-1]:.3g}  [{time.perf_counter() - t_start:.0f}s]")  # fmt: skip

    def ratios_of(key: str) -> dict[str, list[float]]:  # per variant, per seed: N=0's degradation over the variant's
        base = {row["seed"]: row[key] for row in students["N0"]}
        return {
            name: [base[row["seed"]] / row[key] if row[key] else math.inf for row in rows]
            for name, rows in students.items()
            if name != "N0"
        }

    ratios, baseline = ratios_of("degradation_fd"), [row["degradation_fd"] for row in students["N0"]]
    other_ratios = {key: ratios_of(key).get(ard_name) for key in ("degradation_fd_to_teacher", "mse")}
    result = {
        "settings": asdict(s),
        "classifier_heldout_accuracy": held_acc,
        "reals": real_scores,
        "teacher": {**teacher_scores, **teacher_info},
        "students": students,
        "degradation_fd": {name: spread([row["degradation_fd"] for row in rows]) for name, rows in students.items()},
        "fd_to_teacher": {name: spread([row["fd_to_teacher"] for row in rows]) for name, rows in students.items()},
        "mse_to_teacher": {name: spread([row["mse"] for row in rows]) for name, rows in students.items()},
        "degradation_ratio": statistics.median(ratios[ard_name]) if ard_name in ratios else None,
        "degradation_ratio_per_seed": ratios.get(ard_name),
        "degradation_ratio_by_variant": {name: spread(v) for name, v in ratios.items()},
        "degradation_ratio_fd_to_teacher_per_seed": other_ratios["degradation_fd_to_teacher"],
        "degradation_ratio_mse_per_seed": other_ratios["mse"],
        "baseline_degradation_over_seed_spread": {
            key: spread(v)["median"] / max(1e-12, spread(v)["std"])
            for key, v in (
                ("fd", baseline),
                ("fd_to_teacher", [row["fd_to_teacher"] for row in students["N0"]]),
                ("mse", [row["mse"] for row in students["N0"]]),
            )
        },
        "gan": gan_rows,
        "gan_sweep": sweep_rows,
        "gan_fd_minus_r_fd": statistics.median([row["fd_minus"] for row in gan_rows]) if gan_rows else None,
        "seconds": time.perf_counter() - t_start,
    }
    return result


def plot(result: dict, path: str | Path) -> None:
    """Degradation (FD to the reals, MSE to the teacher) per student per seed, and R vs R+G per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(result["students"])
    panels = (
        ("degradation_fd", "FD(student) − FD(teacher), to held-out reals"),
        ("mse", "MSE to the teacher's sample"),
    )
    for ax, (key, label) in zip(axes[:2], panels, strict=True):
        for i, name in enumerate(names):
            rows = result["students"][name]
            ax.scatter([i] * len(rows), [r[key] for r in rows], label=name)
            for r in rows:
                ax.annotate(str(r["seed"]), (i, r[key]), xytext=(4, 0), textcoords="offset points")
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(label)
    axes[0].set_title(f"degradation per student per seed (ratio N0/ARD {result['degradation_ratio']:.2f})")
    axes[1].set_title("distance to the teacher, same noise")
    axes = [axes[0], axes[2]]
    if result["gan"]:
        seeds = [row["seed"] for row in result["gan"]]
        axes[1].plot(seeds, [row["r"]["fd"] for row in result["gan"]], "o-", label="R continued")
        axes[1].plot(seeds, [row["rg"]["fd"] for row in result["gan"]], "s-", label="R+G")
        axes[1].axhline(result["teacher"]["fd"], color="gray", ls="--", label="teacher")
        axes[1].set_xlabel("seed")
        axes[1].set_ylabel("FD to held-out reals")
        axes[1].legend()
        axes[1].set_title("GAN stage from the ARD R student")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse(argv=None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if name == "gan_sweep":
            parser.add_argument(flag, type=json.loads, default=value, help="JSON list of GANConfig overrides")
        elif isinstance(value, list):
            parser.add_argument(flag, nargs="+", type=type(value[0]), default=value)
        elif isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif isinstance(value, dict):
            parser.add_argument(flag, type=json.loads, default=value, help="JSON object of GANConfig fields")
        else:
            parser.add_argument(flag, type=type(value) if value is not None else str, default=value)
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--plot", help="write the plot (fidelity.png) here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return Settings(**{k: getattr(args, k) for k in asdict(defaults)}), args


def main(argv=None) -> dict:
    s, args = parse(argv)
    torch.set_num_threads(args.threads)
    result = run(s)
    keys = ("degradation_ratio", "degradation_ratio_per_seed", "gan_fd_minus_r_fd", "degradation_fd")
    print(json.dumps({k: result[k] for k in (*keys, "baseline_degradation_over_seed_spread")}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    return result


if __name__ == "__main__":
    main()
