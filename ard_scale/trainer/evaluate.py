"""Evaluation of a run: the recipe's metrics on the student's S-step samples beside the teacher's own.

`EvalSetup` is built once from the recipe — metrics (FID against reference statistics, CLIP score), the evaluation
set (classes, or prompts from eval.prompts_path / the data's captions), fixed noise, the teacher's full sampler and
the decode to pixels — and is used in the loop (`LoopEvaluation`) and by the offline job (launchers/eval.py).

Cached, keyed on what defines them (eval.cache_dir, default RUN_DIR/eval/cache):
- `fid_reference_<key>.npz`: reference statistics computed once from data.path (key: shard set, resolution, number
  of images, Inception weights file), unless eval.fid_reference_path gives an .npz;
- `teacher_<key>.json`: the teacher's metrics (key: teacher, diffusion sampler, VAE, text encoder, the evaluation
  set and its noise — seeds and shape, i.e. data.resolution —, the metrics' weights and reference), so every student
  number sits beside its teacher's.

In the loop, every eval.every steps, on every rank (the models are sharded: a forward is a collective, so all ranks
generate, each its share, and the results are gathered): the EMA weights swapped in (eval.use_ema), the module in
eval mode, the RNG states saved, and all of it restored afterwards, so training continues exactly as without
evaluation. Results go to metrics.jsonl (one record with the step and `eval/…` keys) and a teacher-over-student
grid to RUN_DIR/eval/grids/step_XXXXXXXX.png.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ard_scale.checkpoint.layout import tag_of
from ard_scale.config import RootConfig, to_dict
from ard_scale.config.models import SLOT_SECTIONS, DiffusionConfig
from ard_scale.config.training import EvalConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import Schedule
from ard_scale.diffusion.solvers import num_evals
from ard_scale.diffusion.trajectory import teacher_trajectory
from ard_scale.distributed.collectives import all_ranks
from ard_scale.distributed.ema import ZeroEMA
from ard_scale.distributed.engines import gather_once
from ard_scale.errors import UserError
from ard_scale.evaluation.eval_set import (
    cache_key,
    data_captions,
    file_identity,
    read_json,
    read_prompts,
    reference_stats_from_shards,
    write_json,
)
from ard_scale.evaluation.evaluator import Evaluator, GenerateFn, dist_gather, generate_all
from ard_scale.evaluation.generate import ConditionFn, conditional_generate_fn
from ard_scale.evaluation.grids import labelled_grid, save_png, to_uint8_hwc
from ard_scale.evaluation.plots import plot_metrics
from ard_scale.models.teachers import Teacher
from ard_scale.trainer.build import Run, latent_shape
from ard_scale.utils.noise import eval_seeds

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

EVAL_SEED = eval_seeds(1)[0]  # evaluation sample i draws its noise from EVAL_SEED + i (the EVAL noise stream)


@dataclass
class TeacherSampler:
    """The teacher's full guided sampler: `diffusion`'s solver over the S·K-step grid of `num_student_steps`, with
    CFG at `cfg_scale` against `null_for(batch size)` (1: none, e.g. a guidance-embedding teacher) combined by the
    family's `guide`; `gather_once` fetches a ZeRO-3 teacher's weights once per batch."""

    denoise: Any  # the teacher (or its frozen engine)
    schedule: Schedule
    null_for: Callable[[int], Condition]
    cfg_scale: float
    num_student_steps: int
    diffusion: DiffusionConfig
    noise_shape: tuple[int, int, int]
    guide: Any = None
    gather_once: bool = False

    @property
    def calls(self) -> int:
        """Teacher forwards per sample."""
        steps = self.diffusion.substeps * self.num_student_steps
        return num_evals(self.diffusion.solver, steps, guided=self.cfg_scale != 1)

    def __call__(self, noise: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The final state of the teacher's sampler from `noise`."""
        d, guided = self.diffusion, self.cfg_scale != 1
        gather = (lambda: gather_once(self.denoise)) if self.gather_once else contextlib.nullcontext
        traj = teacher_trajectory(
            self.denoise,
            self.schedule,
            cond,
            latent_shape=self.noise_shape,
            noise=noise,
            null_cond=self.null_for(noise.shape[0]) if guided else None,
            guidance_scale=self.cfg_scale,
            num_student_steps=self.num_student_steps,
            substeps=d.substeps,
            solver=d.solver,
            guided_channels=d.guide_first_channels,
            guide=self.guide,
            gather=gather,
        )
        return traj.final


@dataclass
class EvalSetup:
    """Everything generating and scoring need, built once (`build_eval_setup`)."""

    settings: EvalConfig  # the recipe's eval section
    evaluator: Evaluator
    condition_for: ConditionFn  # global sample indices -> (condition, captions or None)
    labels_for: Callable[[torch.Tensor], list[str]]  # global sample indices -> what each shows (runs no model)
    teacher_sample: TeacherSampler
    decode: Callable[[torch.Tensor], torch.Tensor]  # latents -> [-1, 1] pixels
    device: torch.device
    cache_dir: Path
    teacher_description: dict
    skipped: list[str] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    is_main: bool = True

    @property
    def gather(self):
        return self.evaluator.gather

    def generate_fn(self, sample: Callable[[torch.Tensor, Condition], torch.Tensor]) -> GenerateFn:
        """Images of the evaluation set from `sample(noise, condition)` (the student's S-step sampler, say)."""
        return conditional_generate_fn(
            sample,
            noise_shape=self.teacher_sample.noise_shape,
            condition_for=self.condition_for,
            decode=self.decode,
            seed=EVAL_SEED,
            device=self.device,
        )

    def grid_labels(self, num: int) -> list[str]:
        """What sample i of the grid shows: its prompt, or its class. Runs no model (no text encoder): rank 0 alone
        calls it, and a forward of a ZeRO-3 partitioned encoder on one rank is a collective the others never join."""
        return self.labels_for(torch.arange(num))

    def row_labels(self) -> list[str]:
        sampler = self.teacher_sample
        return [f"teacher: {sampler.calls} calls", f"student: {sampler.num_student_steps} calls"]

    def run(self, sample) -> dict[str, float]:
        """The metrics of `sample`'s images (collective: every rank calls it); {} when no metric has its weights."""
        if self.evaluator.fid is None and self.evaluator.clip is None:
            return {}
        return self.evaluator.run(self.generate_fn(sample))

    def grid_images(self, sample) -> torch.Tensor:
        """The first eval.grid_size images of `sample` (num, 3, H, W) in [0, 1] on every rank (collective)."""
        ev = self.settings
        return generate_all(
            self.generate_fn(sample), ev.grid_size, ev.batch_size, rank=self.rank, world_size=self.world_size,
            gather=self.gather,
        )  # fmt: skip

    def teacher_metrics(self) -> dict[str, float]:
        """The teacher's metrics on this evaluation set, computed once (collectively) and cached."""
        path = self.cache_dir / f"teacher_{cache_key(self.teacher_description)}.json"
        if all_ranks(path.is_file()):
            return read_json(path)["values"]
        values = self.run(self.teacher_sample)
        if self.is_main:
            write_json(path, {"values": values, "description": self.teacher_description})
        return values


def model_description(section: Any, seed: int) -> dict:
    """What defines a frozen model's output (the teacher, the VAE, a text encoder): its recipe section and its weights
    (a named size: random weights drawn from `seed`)."""
    return {**to_dict(section), "weights": file_identity(section.path) if section.path else {"seed": seed}}


def build_eval_setup(
    cfg: RootConfig,
    *,
    teacher: Teacher,
    teacher_denoise: Any,
    schedule: Schedule,
    conditioner: Any,
    codec: torch.nn.Module,
    run_dir: Path,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> EvalSetup:
    """The recipe's evaluation: metrics whose weights are given (what is not is listed in `skipped`), the evaluation
    set, the teacher's sampler. Collective when it computes reference statistics (every rank calls it)."""
    ev, device = cfg.eval, torch.device(device)
    gather = dist_gather if world_size > 1 else None
    cache_dir = Path(ev.cache_dir) if ev.cache_dir is not None else Path(run_dir) / "eval" / "cache"
    skipped: list[str] = []
    codec = codec.to(device)
    text = teacher.condition_kind == "text"

    # the evaluation set: sample i is class i mod K, or prompt i mod P
    if text:
        if not getattr(conditioner, "can_encode", False):
            raise UserError(
                "evaluating a text-to-image student encodes its prompts with T5, but text_encoder.use_precomputed "
                "leaves no encoder: give text_encoder.path, or set eval.every=null"
            )
        if ev.prompts_path is not None:
            prompts = read_prompts(ev.prompts_path)
        else:
            prompts = data_captions(cfg.data.path, cfg.data.format, max(ev.num_samples, ev.grid_size))

        def labels_for(indices: torch.Tensor) -> list[str]:
            return [prompts[int(i) % len(prompts)] for i in indices]

        def condition_for(indices: torch.Tensor) -> tuple[Condition, list[str]]:
            captions = labels_for(indices)
            return conditioner.encode(captions), captions

        def null_for(batch_size: int) -> Condition:
            return conditioner.encode([teacher.spec.null_caption] * batch_size)

        eval_set = {"prompts": cache_key({"prompts": prompts}), "num_prompts": len(prompts)}
    else:
        num_classes = teacher.num_classes

        def condition_for(indices: torch.Tensor) -> tuple[Condition, None]:
            return Condition(labels=indices.long() % num_classes), None

        def labels_for(indices: torch.Tensor) -> list[str]:
            return [f"class {int(i) % num_classes}" for i in indices]

        null_for = teacher.null_condition
        eval_set = {"num_classes": num_classes}
    noise_shape = latent_shape(cfg, teacher)  # data.resolution's latents: the teacher's numbers depend on the size
    eval_set.update(num_samples=ev.num_samples, seed=EVAL_SEED, noise_shape=list(noise_shape))

    # metrics
    fid = clip = None
    fid_id = clip_id = None
    if ev.fid_inception_path is None:
        skipped.append("FID (eval.fid_inception_path is null: give a local pt_inception-2015-12-05-6726825d.pth)")
    else:
        from ard_scale.evaluation.fid import FID, ReferenceStats, inception_feature_extractor

        fid = FID(inception_feature_extractor(ev.fid_inception_path)).to(device)
        if ev.fid_reference_path is not None:
            fid.set_reference(ReferenceStats.load(ev.fid_reference_path, fid.num_features))
            fid_id = {"inception": file_identity(ev.fid_inception_path), "npz": file_identity(ev.fid_reference_path)}
        else:
            fid_id = reference_description(cfg)
            fid.set_reference(
                cached_reference_stats(fid, cfg, cache_dir / f"fid_reference_{cache_key(fid_id)}.npz", rank, world_size)
            )
    if not text:
        if ev.clip_path is not None:
            warnings.warn("eval.clip_path is ignored: class-conditional samples have no captions", stacklevel=2)
    elif ev.clip_path is None:
        skipped.append("CLIP score (eval.clip_path is null: give local open_clip weights)")
    else:
        from ard_scale.evaluation.clip_score import CLIPScore

        clip = CLIPScore.from_pretrained(ev.clip_model, ev.clip_path)
        clip.model.to(device)
        clip_id = {"model": ev.clip_model, "weights": file_identity(ev.clip_path)}

    seeded = cfg.train.seed  # named sizes are random weights drawn from train.seed
    encoder_sections = [SLOT_SECTIONS[slot] for slot in teacher.spec.text_encoders]
    teacher_description = {
        "teacher": model_description(cfg.teacher, seeded),
        "diffusion": to_dict(cfg.diffusion),
        "num_student_steps": cfg.student.num_steps,  # the teacher grid has S·K steps
        "teacher_dtype": str(teacher.dtype),  # bf16 in a bf16 run, fp32 offline
        "vae": model_description(cfg.vae, seeded),
        # every encoder the family reads (T5, CLIP towers, Qwen2.5-VL): each one's settings and weights shape the
        # teacher's condition
        "text_encoders": {section: model_description(getattr(cfg, section), seeded) for section in encoder_sections}
        if text
        else {},
        "eval_set": eval_set,
        "fid": fid_id,
        "clip": clip_id,
    }
    evaluator = Evaluator(ev, fid=fid, clip=clip, rank=rank, world_size=world_size, gather=gather)
    teacher_sample = TeacherSampler(
        teacher_denoise,
        schedule,
        null_for,
        conditioner.cfg_scale,
        cfg.student.num_steps,
        cfg.diffusion,
        noise_shape,
        guide=teacher.spec.guide,
        gather_once=cfg.zero.gather_teacher_once and cfg.zero.teacher_stage == 3,
    )
    return EvalSetup(
        settings=ev,
        evaluator=evaluator,
        condition_for=condition_for,
        labels_for=labels_for,
        teacher_sample=teacher_sample,
        decode=codec.decode,
        device=device,
        cache_dir=cache_dir,
        teacher_description=teacher_description,
        skipped=skipped,
        rank=rank,
        world_size=world_size,
        is_main=rank == 0,
    )


def reference_description(cfg: RootConfig) -> dict:
    """What defines FID reference statistics computed from the recipe's data."""
    if cfg.data.path is None:
        raise UserError("FID needs reference statistics: give eval.fid_reference_path (an .npz) or data.path")
    return {
        "data": cfg.data.path
        if "://" in cfg.data.path or cfg.data.path.startswith("bundled:")
        else str(Path(cfg.data.path).resolve()),
        "format": cfg.data.format,
        "resolution": cfg.data.resolution,
        "num_images": cfg.eval.fid_reference_num_images,
        "inception": file_identity(cfg.eval.fid_inception_path),
    }


def cached_reference_stats(fid, cfg: RootConfig, path: Path, rank: int, world_size: int):
    """Reference statistics from `path`, or computed from data.path by every rank together and written by rank 0."""
    from ard_scale.evaluation.fid import ReferenceStats

    if all_ranks(path.is_file()):
        return ReferenceStats.load(path, fid.num_features)
    stats = reference_stats_from_shards(
        fid,
        cfg.data.path,
        cfg.data.format,
        resolution=cfg.data.resolution,
        num_images=cfg.eval.fid_reference_num_images,
        batch_size=cfg.eval.batch_size,
        rank=rank,
        world_size=world_size,
        gather=dist_gather if world_size > 1 else None,
    )
    if rank == 0:
        stats.save(path)
    return stats


@contextlib.contextmanager
def preserved_rng() -> Any:
    """Leave the global RNG streams (torch CPU/CUDA, numpy, python) as they were: evaluation draws nothing from them
    that training would miss."""
    state = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class LoopEvaluation:
    """In-loop evaluation of the student `engine.module`: `maybe_run(step)` after each step (see the module
    docstring). Built from a recipe by `build_loop_evaluation`; `setup` None evaluates nothing."""

    def __init__(
        self,
        setup: EvalSetup | None,
        *,
        engine: DeepSpeedEngine,
        ema: ZeroEMA | None,
        run_dir: Path,
        write: Callable[[dict], None],
    ):
        self.setup, self.engine, self.write = setup, engine, write  # the student is engine.module
        self.ema = ema if setup is not None and setup.settings.use_ema else None  # swapped in around each evaluation
        self.run_dir = Path(run_dir)
        self.teacher_grid: torch.Tensor | None = None
        self.teacher_values: dict[str, float] | None = None

    def maybe_run(self, step: int) -> dict | None:
        """Evaluate at every eval.every-th step (on every rank); the metrics record, or None."""
        if self.setup is None or not self.setup.evaluator.should_run(step):
            return None
        t0 = time.perf_counter()
        student = self.engine.module
        was_training = student.training
        swap = self.ema.swapped_in(self.engine) if self.ema is not None else contextlib.nullcontext()
        with preserved_rng(), torch.no_grad():
            student.eval()
            try:
                with swap:
                    values = self.setup.run(student.sample)
                    grid = self.setup.grid_images(student.sample) if self.setup.settings.grid_size else None
                if self.teacher_values is None:  # the teacher's, once (cached across runs of the recipe)
                    self.teacher_values = self.setup.teacher_metrics()
                if grid is not None and self.teacher_grid is None:
                    self.teacher_grid = self.setup.grid_images(self.setup.teacher_sample)
            finally:
                student.train(was_training)
        record = {"step": step, **{f"eval/{k}": v for k, v in values.items()}}
        record.update({f"eval/teacher_{k}": v for k, v in self.teacher_values.items() if k != "num_samples"})
        record["eval/ema"] = float(self.ema is not None)
        record["eval/seconds"] = time.perf_counter() - t0
        if self.setup.is_main and grid is not None:
            rows = [to_uint8_hwc(self.teacher_grid * 2 - 1), to_uint8_hwc(grid * 2 - 1)]  # same noise and condition
            image = labelled_grid(rows, self.setup.grid_labels(len(grid)), self.setup.row_labels())
            save_png(self.run_dir / "eval" / "grids" / f"{tag_of(step)}.png", image)
        self.write(record)
        if self.setup.is_main:
            plot_metrics(self.run_dir)
        return record


def build_loop_evaluation(
    cfg: RootConfig, run: Run, ema: ZeroEMA | None, write: Callable[[dict], None]
) -> LoopEvaluation:
    """The recipe's in-loop evaluation of `run`: collective when eval.every is set (reference statistics), and one
    that evaluates nothing otherwise."""
    run_dir = Path(cfg.checkpoint.run_dir)
    setup = None
    if cfg.eval.every is not None:
        setup = build_eval_setup(
            cfg,
            teacher=run.teacher,
            teacher_denoise=run.teacher_engine,
            schedule=run.schedule,
            conditioner=run.conditioner,
            codec=run.codec,
            run_dir=run_dir,
            device=run.engine.device,
            rank=run.rank,
            world_size=run.world_size,
        )
        notes = [f"skips {s}" for s in setup.skipped]
        if cfg.eval.use_ema and ema is None:
            notes.append("uses the raw weights (eval.use_ema, but train.ema_decay is null)")
        if notes and run.rank == 0:
            warnings.warn(f"in-loop evaluation {'; '.join(notes)}", stacklevel=2)
    return LoopEvaluation(setup, engine=run.engine, ema=ema, run_dir=run_dir, write=write)
