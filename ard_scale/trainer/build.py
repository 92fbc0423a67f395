"""Config -> the objects a run needs. Factories construct; the loop only runs (STYLE.md 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ard_scale.checkpoint.export import load_student_weights
from ard_scale.config import RootConfig
from ard_scale.config.teacher_fit import bucket_problems
from ard_scale.data import build_loader
from ard_scale.data.samples import BatchStream
from ard_scale.data.transforms import bucket_latent_sizes
from ard_scale.diffusion.schedules import Schedule, schedule_for_recipe
from ard_scale.diffusion.trajectory import uniform_teacher_grid
from ard_scale.distributed.collectives import streaming_build_turn
from ard_scale.distributed.engines import (
    build_frozen_engine,
    build_student_engine,
    frozen_ds_config,
    student_ds_config,
)
from ard_scale.errors import UserError
from ard_scale.losses.regression import RegressionLoss
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher, teacher_from_config, teacher_identity
from ard_scale.models.vae import FrameLatentCodec, LatentCodec, PixelCodec, build_codec, vae_downsample
from ard_scale.trainer.checks import check_attention, check_channel_options, check_guidance
from ard_scale.trainer.conditioning import SLOTS, Conditioner, distilled_guidance, precomputed_null
from ard_scale.trainer.trajectories import NoiseSeeds, TrajectorySource, build_trajectory_source, check_offline_dump

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


def latent_side(cfg: RootConfig) -> int:
    """Side of the teacher's states at `data.resolution`: pixels over the VAE's downsampling (1 in pixel space)."""
    return cfg.data.resolution // vae_downsample(size=cfg.vae.size, path=cfg.vae.path)


def latent_shape(cfg: RootConfig, teacher: Teacher) -> tuple[int, int, int]:
    """(C, H, W) of the trajectory states of this recipe's teacher, refused unless the teacher takes that size."""
    side = latent_side(cfg)
    teacher.spec.check_latent_side(teacher.model, side)
    return (teacher.in_channels, side, side)


def bucket_sizes(cfg: RootConfig, teacher: Teacher) -> list[tuple[int, int]] | None:
    """(H, W) of the trajectory states of each aspect-ratio bucket with data.buckets (None without), each refused
    unless the teacher takes it (`Family.check_latent_size`)."""
    if not cfg.data.buckets:
        return None
    down = vae_downsample(size=cfg.vae.size, path=cfg.vae.path)
    problems = bucket_problems(teacher.spec, teacher.model, cfg.data.resolution, down)
    if problems:
        raise UserError(problems[0], every_rank=True)
    return bucket_latent_sizes(cfg.data.resolution, down)


def build_schedule(cfg: RootConfig, patch_size: int = 2) -> Schedule:
    """The recipe's schedule (one builder for the trainer, the planner, evaluation and the dumper): with
    `diffusion.dynamic_shift` its shift follows the image token count at `data.resolution`."""
    return schedule_for_recipe(cfg.diffusion, latent_side(cfg), patch_size)


def build_codec_for(cfg: RootConfig, teacher: Teacher) -> LatentCodec | FrameLatentCodec | PixelCodec:
    """The recipe's `vae` section as a codec for `teacher`'s states."""
    v = cfg.vae
    return build_codec(
        size=v.size,
        path=v.path,
        scaling_factor=v.scaling_factor,
        shift_factor=v.shift_factor,
        channels=teacher.in_channels,
        seed=cfg.train.seed,
    )


def build_teacher_model(cfg: RootConfig) -> Teacher:
    return teacher_from_config(cfg.teacher, cfg.train.seed)


def embedded_guidance(cfg: RootConfig, teacher: Teacher) -> float | None:
    """The guidance value a guidance-distilled teacher embeds (`diffusion.guidance_scale`), None for others."""
    return distilled_guidance(teacher, cfg.diffusion.guidance_scale)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # train.precision


def build_conditioner(cfg: RootConfig, teacher: Teacher, device="cpu", *, for_eval: bool = False) -> Conditioner:
    """The recipe's Conditioner: its text encoder sections, its guidance, and where text comes from (the shards'
    embeddings with text_encoder.use_precomputed, else the captions: one choice for every rank). The encoders are
    kept after encoding the null caption unless the shards carry the embeddings and nothing is evaluated
    (`for_eval`, `eval.every`)."""
    keep = for_eval or cfg.eval.every is not None or not cfg.text_encoder.use_precomputed
    return Conditioner(
        teacher,
        {slot: getattr(cfg, section) for slot, (section, _, _) in SLOTS.items()},
        guidance_scale=cfg.diffusion.guidance_scale,
        keep_encoders=keep,
        null=None if keep else precomputed_null(cfg.data.path),
        qwen_dtype=PRECISIONS[cfg.train.precision],
        t5_dtype=PRECISIONS[cfg.text_encoder.dtype_name(cfg.train.precision)],
        device=device,
        text_source="precomputed" if cfg.text_encoder.use_precomputed else "captions",
    )


@dataclass
class Run:
    """Everything the loop runs, built once (from a recipe, by `build_run`; the pieces take their own sections)."""

    rank: int
    world_size: int
    schedule: Schedule
    teacher: Teacher
    teacher_engine: DeepSpeedEngine | Teacher  # a frozen engine, or the Teacher itself (teacher_stage 0, LoRA-shared)
    engine: DeepSpeedEngine  # the student's
    loader: BatchStream  # what a step draws: images + conditions, or offline trajectories (trajectory_source)
    loss_fn: RegressionLoss
    conditioner: Conditioner
    # images <-> the teacher's states (replicated; GAN reals, eval decoding)
    codec: LatentCodec | FrameLatentCodec | PixelCodec
    trajectories: TrajectorySource  # the step's (ard_scale/trainer/trajectories.py); its state is per rank
    latent_shape: tuple[int, int, int]  # (C, H, W) of a state at data.resolution (with data.buckets: the square's)
    init_from: str | None = None  # the checkpoint a fresh GAN stage's student started from (gan.init_from)

    @property
    def student(self) -> ARDStudent:
        return self.engine.module


def ds_scheduler(cfg: RootConfig) -> dict | None:
    """DeepSpeed's scheduler section for `train.lr_schedule`/`warmup_steps`: linear warm-up from 0 and decay to 0.

    DeepSpeed's defaults are not what the schema promises (a logarithmic warm-up; WarmupCosineLR ends at 1e-4·lr), so
    every parameter is set. DeepSpeed advances the schedule after each optimizer step: with n steps done and i = n-1,
    the next update runs at (T = max_steps; W* = max(2, warmup_steps), DeepSpeed's floor, so a decay without
    warm-up still warms up over 2 steps)
      n = 0              0
      warm-up (i < W*)   lr·i/W*
      constant           lr
      linear             lr·(T-1-i)/(T-1-W*)  (total_num_steps=T-1, so that it is 0 at n = T)
      cosine             lr·(1+cos(π·(i-W*+1)/(T-W*)))/2  (0 at n = T)
    tests/unit/trainer/test_lr_schedule.py checks these against DeepSpeed's classes."""
    tr = cfg.train
    if tr.lr_schedule == "constant" and tr.warmup_steps == 0:
        return None
    warmup = max(tr.warmup_steps, 2)  # DeepSpeed's own floor, made visible
    if tr.lr_schedule == "constant":
        params = {"warmup_min_lr": 0.0, "warmup_max_lr": tr.lr, "warmup_num_steps": warmup, "warmup_type": "linear"}
        return {"type": "WarmupLR", "params": params}
    if tr.lr_schedule == "linear":
        params = {
            "total_num_steps": tr.max_steps - 1,
            "warmup_min_lr": 0.0,
            "warmup_max_lr": tr.lr,
            "warmup_num_steps": warmup,
            "warmup_type": "linear",
        }
        return {"type": "WarmupDecayLR", "params": params}
    params = {
        "total_num_steps": tr.max_steps,
        "warmup_min_ratio": 0.0,
        "warmup_num_steps": warmup,
        "cos_min_ratio": 0.0,
        "warmup_type": "linear",
    }
    return {"type": "WarmupCosineLR", "params": params}


def _frozen_zero3(module: torch.nn.Module, micro_batch: int) -> torch.nn.Module:
    """`module` partitioned in a frozen ZeRO-3 engine, in the dtype it was loaded in (T5 and CLIP fp32, Qwen2.5-VL the
    run's precision); called directly, its ZeRO-3 hooks gather each submodule's weights for its forward."""
    dtype = next(module.parameters()).dtype
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    return build_frozen_engine(module, frozen_ds_config(micro_batch=micro_batch, precision=precision)).module


def build_data(cfg: RootConfig, rank: int, world_size: int):
    """This rank's batches: the offline trajectory dump (`train.trajectory_source: offline`) or image-caption shards."""
    if cfg.train.trajectory_source == "offline":
        from ard_scale.data.trajectories import trajectory_loader  # mosaicml-streaming: only offline runs import it

        return trajectory_loader(cfg.data, rank=rank, world_size=world_size)
    return build_loader(cfg.data, rank=rank, world_size=world_size)


def student_engine_config(cfg: RootConfig) -> dict:
    """The student engine's DeepSpeed config for the recipe: batch, optimizer, ZeRO stage and offload, precision, and
    the learning-rate schedule."""
    tr, zero = cfg.train, cfg.zero
    ds_cfg = student_ds_config(
        micro_batch=cfg.data.batch_size,
        grad_accum=tr.grad_accum,
        lr=tr.lr,
        betas=tr.betas,
        weight_decay=tr.weight_decay,
        grad_clip=tr.grad_clip or 0.0,
        zero_stage=zero.stage,
        precision=tr.precision,
        offload_optimizer=zero.offload_optimizer,
        offload_params=zero.offload_params,
    )
    scheduler = ds_scheduler(cfg)
    if scheduler:
        ds_cfg["scheduler"] = scheduler
    return ds_cfg


def build_run(cfg: RootConfig, rank: int, world_size: int, *, adapt_ds_config=None, fresh: bool = True) -> Run:
    """`adapt_ds_config(ds_config) -> ds_config` lets the checkpoint manager switch on universal loading. `fresh`:
    the run has no checkpoint of its own, so `gan.init_from` (if set) initialises the student."""
    tr, zero = cfg.train, cfg.zero
    torch.manual_seed(tr.seed)  # identical student initialisation on every rank
    teacher = build_teacher_model(cfg)
    shape, buckets = latent_shape(cfg, teacher), bucket_sizes(cfg, teacher)
    check_channel_options(cfg, teacher)
    check_guidance(cfg, teacher)
    schedule = build_schedule(cfg, teacher.patch_size)
    guidance = embedded_guidance(cfg, teacher)
    student = ARDStudent(teacher, cfg.student, schedule, latent_shape=shape, guidance=guidance, latent_sizes=buckets)
    student.activation_checkpointing = tr.activation_checkpointing
    init_from = None
    if fresh and cfg.gan.enabled and cfg.gan.init_from is not None:
        init_from = load_student_weights(student, cfg.gan.init_from, use_ema=cfg.gan.init_from_ema)

    micro = cfg.data.batch_size
    ds_cfg = student_engine_config(cfg)
    if adapt_ds_config is not None:
        ds_cfg = adapt_ds_config(ds_cfg)
    engine, _ = build_student_engine(student, ds_cfg)
    check_attention(cfg, engine.device)
    if student.shares_teacher:  # a LoRA student holding the teacher's weights: the student engine partitions them
        teacher_engine = teacher
    elif zero.teacher_stage == 3:
        teacher_engine = build_frozen_engine(teacher, frozen_ds_config(micro_batch=micro, precision=tr.precision))
    else:
        # replicated: every rank holds it whole on its device, in train.precision as a frozen engine would cast it
        teacher_engine = teacher.to(engine.device, PRECISIONS[tr.precision])

    conditioner = build_conditioner(cfg, teacher, engine.device)
    if zero.teacher_stage == 3:  # the frozen text encoders are partitioned like the teacher (in their own dtype)
        conditioner.partition(lambda encoder: _frozen_zero3(encoder, micro))

    with streaming_build_turn(rank, world_size, cfg.data.local_world_size):  # one build per host at a time
        loader = build_data(cfg, rank, world_size)
    if tr.trajectory_source == "offline":
        check_offline_dump(
            loader.meta,
            loader.sample_shape(),
            loader.condition_kind(),
            path=cfg.data.trajectory_path,
            student_times=schedule.grid(cfg.student.num_steps).tolist(),
            latent_shape=shape,
            family=teacher.family,
            sampler={
                "teacher_grid": uniform_teacher_grid(schedule, cfg.student.num_steps, cfg.diffusion.substeps).tolist(),
                "solver": cfg.diffusion.solver,
                "guidance_scale": cfg.diffusion.guidance_scale,
                "guided_channels": cfg.diffusion.guide_first_channels,
                "teacher_identity": teacher_identity(
                    cfg.teacher.path, cfg.teacher.family, cfg.teacher.size, cfg.train.seed
                ),
            },
        )
    return Run(
        rank=rank,
        world_size=world_size,
        schedule=schedule,
        teacher=teacher,
        teacher_engine=teacher_engine,
        engine=engine,
        loader=loader,
        loss_fn=RegressionLoss(cfg.student.num_steps, tr.loss_weights),
        conditioner=conditioner,
        codec=build_codec_for(cfg, teacher),
        trajectories=build_trajectory_source(
            tr.trajectory_source,
            teacher_engine,
            schedule,
            conditioner,
            seeds=NoiseSeeds(tr.seed, rank, world_size, tr.grad_accum, cfg.data.batch_size),
            latent_shape=shape,
            num_student_steps=cfg.student.num_steps,
            diffusion=cfg.diffusion,
            guide=teacher.spec.guide,
            gather_teacher_once=zero.gather_teacher_once,
            bucket_downsample=None if buckets is None else vae_downsample(size=cfg.vae.size, path=cfg.vae.path),
            replay_times=tr.replay_times,
            device=engine.device,
        ),
        latent_shape=shape,
        init_from=init_from,
    )
