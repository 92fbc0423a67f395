"""Config -> the objects a run needs. Factories construct; the loop only runs (STYLE.md 5)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ard_scale.checkpoint.export import load_student_weights
from ard_scale.config import RootConfig
from ard_scale.data import DataConfig as ReaderConfig
from ard_scale.data import build_loader
from ard_scale.data.trajectories import trajectory_loader
from ard_scale.diffusion.schedules import Schedule, schedule_for_recipe
from ard_scale.distributed.engines import (
    build_frozen_engine,
    build_student_engine,
    frozen_ds_config,
    student_ds_config,
)
from ard_scale.losses.regression import RegressionLoss
from ard_scale.models.condition import Condition
from ard_scale.models.families import get_family
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher, build_teacher, load_teacher
from ard_scale.models.vae import LatentCodec, PixelCodec, build_codec
from ard_scale.trainer.checks import check_channel_options, check_labels
from ard_scale.trainer.trajectories import build_trajectory_source, check_offline_dump


def build_schedule(cfg: RootConfig, patch_size: int = 2) -> Schedule:
    """The recipe's schedule (one builder for the trainer, the planner, evaluation and the dumper): with
    `diffusion.dynamic_shift` its shift follows the image token count at `data.resolution`."""
    has_vae = cfg.vae.path is not None or cfg.vae.size is not None
    side = cfg.data.resolution // 8 if has_vae else cfg.data.resolution
    return schedule_for_recipe(cfg.diffusion, side, patch_size)


def build_teacher_model(cfg: RootConfig) -> Teacher:
    t = cfg.teacher
    if t.path is not None:
        return load_teacher(t.path, family=t.family)
    return build_teacher(t.family, t.size, seed=cfg.train.seed, **get_family(t.family).size_overrides(t.num_classes))


class Conditioner:
    """Batch -> (condition, null condition) for the teacher's family, on the run's device.

    DiT: the batch's class labels; null = class `num_classes`. PixArt: precomputed T5 embeddings from the shards
    (`t5_emb`, `t5_mask`) or the T5 encoder run on the captions; null = the empty caption's embedding, encoded once
    (with precomputed embeddings and no evaluation of prompts, `for_eval` or `eval.every`, the encoder is loaded for
    that alone and then dropped)."""

    def __init__(self, cfg: RootConfig, teacher: Teacher, device: torch.device | str = "cpu", *, for_eval=False):
        self.kind, self.teacher, self.device = teacher.condition_kind, teacher, torch.device(device)
        self.encoder = self.tokenizer = self.null = None
        tec = cfg.text_encoder
        self.max_length = tec.max_length
        if self.kind != "text":
            return
        missing = [e for e in teacher.spec.text_encoders if e not in ("t5",)]
        if missing:
            raise ValueError(
                f"training a {teacher.family} teacher needs its {' and '.join(missing)} text encoder(s) beside T5 "
                "(FLUX.1: the pooled CLIP-L embedding), which the trainer does not run yet; the family, its student "
                "and the planner are complete (python -m ard_scale.plan RECIPE), training is the open part of issue 12"
            )
        keep = for_eval or cfg.eval.every is not None or not tec.use_precomputed
        if not keep and cfg.diffusion.guidance_scale == 1:
            return
        from ard_scale.models.text_encoder import build_t5, load_t5

        self.encoder, self.tokenizer = load_t5(tec.path) if tec.path is not None else build_t5(tec.size)
        self.encoder.to(self.device)
        self.null = self._encode([""])  # (1, max_length, D), (1, max_length)
        if not keep:
            self.encoder = self.tokenizer = None

    def __call__(self, batch: dict[str, Any]) -> tuple[Condition, Condition]:
        """The batch's condition and null condition, on the run's device."""
        cond, null = self._conditions(batch)
        return cond.to(self.device), null.to(self.device)

    def _conditions(self, batch: dict[str, Any]) -> tuple[Condition, Condition]:
        if self.kind == "labels":
            if "labels" not in batch:
                raise ValueError(
                    "the class-conditional teacher needs class labels, but the data shards carry none; "
                    "write them with launchers/build_shards.py (a `label` per sample)"
                )
            labels = batch["labels"].long()
            check_labels(labels, batch.get("keys"), self.teacher.num_classes)
            return Condition(labels=labels), self.teacher.null_condition(labels.shape[0])
        if "t5_emb" in batch:
            text, mask = batch["t5_emb"].float(), batch["t5_mask"]
        elif self.encoder is None:
            raise ValueError(
                "text_encoder.use_precomputed is set but the shards carry no t5_emb; "
                "run launchers/precompute_text.py on them or set text_encoder.use_precomputed=false"
            )
        else:
            text, mask = self._encode(batch["captions"])
        B, L = text.shape[:2]
        if self.null is None:  # guidance 1: the null condition is never evaluated
            return Condition(text=text, text_mask=mask), Condition(text=torch.zeros_like(text), text_mask=mask)
        null_text, null_mask = self.null  # pad/crop to the batch's token count
        null_text = torch.nn.functional.pad(null_text, (0, 0, 0, max(0, L - null_text.shape[1])))[:, :L]
        null_mask = torch.nn.functional.pad(null_mask, (0, max(0, L - null_mask.shape[1])))[:, :L]
        null = Condition(text=null_text.expand(B, -1, -1), text_mask=null_mask.expand(B, -1))
        return Condition(text=text, text_mask=mask), null

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from ard_scale.models.text_encoder import encode_captions

        return encode_captions(self.encoder, self.tokenizer, captions, max_length=self.max_length)


@dataclass
class Run:
    """Everything the loop runs, built once."""

    cfg: RootConfig
    rank: int
    world_size: int
    schedule: Schedule
    teacher: Teacher
    teacher_engine: Any  # a frozen DeepSpeed engine (or the Teacher itself at teacher_stage 0)
    engine: Any  # the student's DeepSpeed engine
    loader: Any  # the stream a step draws from: images + conditions, or offline trajectories (trajectory_source)
    loss_fn: RegressionLoss
    conditioner: Conditioner
    codec: LatentCodec | PixelCodec  # images <-> the teacher's states (replicated; GAN reals, eval decoding)
    trajectories: Any  # the step's trajectory source (ard_scale/trainer/trajectories.py); its state is per rank

    @property
    def student(self) -> ARDStudent:
        return self.engine.module

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.teacher.in_channels, self.teacher.sample_size, self.teacher.sample_size)


def ds_scheduler(cfg: RootConfig) -> dict | None:
    tr = cfg.train
    if tr.lr_schedule == "constant" and tr.warmup_steps == 0:
        return None
    if tr.lr_schedule == "constant":
        params = {
            "warmup_min_lr": 0.0,
            "warmup_max_lr": tr.lr,
            "warmup_num_steps": tr.warmup_steps,
            "warmup_type": "linear",
        }
        return {"type": "WarmupLR", "params": params}
    kind = "WarmupCosineLR" if tr.lr_schedule == "cosine" else "WarmupDecayLR"
    params = {"total_num_steps": tr.max_steps, "warmup_num_steps": max(tr.warmup_steps, 1)}
    if kind == "WarmupDecayLR":
        params.update(warmup_min_lr=0.0, warmup_max_lr=tr.lr, warmup_type="linear")
    return {"type": kind, "params": params}


def build_run(cfg: RootConfig, rank: int, world_size: int, *, adapt_ds_config=None, fresh: bool = True) -> Run:
    """`adapt_ds_config(ds_config) -> ds_config` lets the checkpoint manager switch on universal loading. `fresh`:
    the run has no checkpoint of its own, so `gan.init_from` (if set) initialises the student."""
    tr, zero = cfg.train, cfg.zero
    torch.manual_seed(tr.seed)  # identical student initialisation on every rank
    teacher = build_teacher_model(cfg)
    check_channel_options(cfg, teacher)
    schedule = build_schedule(cfg, teacher.patch_size)
    student = ARDStudent(teacher, cfg.student, schedule)
    student.activation_checkpointing = tr.activation_checkpointing
    if fresh and cfg.gan.enabled and cfg.gan.init_from is not None:
        load_student_weights(student, cfg.gan.init_from, use_ema=cfg.gan.init_from_ema)

    micro = cfg.data.batch_size
    ds_cfg = student_ds_config(
        micro_batch=micro,
        grad_accum=tr.grad_accum,
        lr=tr.lr,
        betas=tr.betas,
        weight_decay=tr.weight_decay,
        grad_clip=tr.grad_clip or 0.0,
        zero_stage=zero.stage,
        precision=tr.precision,
    )
    scheduler = ds_scheduler(cfg)
    if scheduler:
        ds_cfg["scheduler"] = scheduler
    if adapt_ds_config is not None:
        ds_cfg = adapt_ds_config(ds_cfg)
    engine, _ = build_student_engine(student, ds_cfg)
    if zero.teacher_stage == 3:
        teacher_engine = build_frozen_engine(teacher, frozen_ds_config(micro_batch=micro, precision=tr.precision))
    else:
        teacher_engine = teacher.to(engine.device)  # replicated: every rank holds it whole on its device

    names = {f.name for f in dataclasses.fields(ReaderConfig)}
    reader_cfg = ReaderConfig(**{k: v for k, v in dataclasses.asdict(cfg.data).items() if k in names})
    if tr.trajectory_source == "offline":
        reader_cfg = dataclasses.replace(reader_cfg, format="mds", path=cfg.data.trajectory_path)
        loader = trajectory_loader(reader_cfg, rank=rank, world_size=world_size)
        check_offline_dump(
            loader.meta,
            loader.sample_shape(),
            loader.condition_kind(),
            path=cfg.data.trajectory_path,
            student_times=schedule.grid(cfg.student.num_steps).tolist(),
            latent_shape=(teacher.in_channels, teacher.sample_size, teacher.sample_size),
            family=teacher.family,
        )
    else:
        loader = build_loader(reader_cfg, rank=rank, world_size=world_size)
    return Run(
        cfg=cfg,
        rank=rank,
        world_size=world_size,
        schedule=schedule,
        teacher=teacher,
        teacher_engine=teacher_engine,
        engine=engine,
        loader=loader,
        loss_fn=RegressionLoss(cfg.student.num_steps, tr.loss_weights),
        conditioner=Conditioner(cfg, teacher, engine.device),
        codec=build_codec(
            size=cfg.vae.size,
            path=cfg.vae.path,
            scaling_factor=cfg.vae.scaling_factor,
            channels=teacher.in_channels,
            seed=tr.seed,
        ),
        trajectories=build_trajectory_source(tr.trajectory_source, tr.replay_times),
    )
