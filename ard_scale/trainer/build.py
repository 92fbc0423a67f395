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
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import Schedule, schedule_for_recipe
from ard_scale.distributed.engines import (
    build_frozen_engine,
    build_student_engine,
    frozen_ds_config,
    student_ds_config,
)
from ard_scale.losses.regression import RegressionLoss
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher, teacher_from_config
from ard_scale.models.vae import FrameLatentCodec, LatentCodec, PixelCodec, build_codec, vae_downsample
from ard_scale.trainer.checks import check_channel_options, check_labels
from ard_scale.trainer.trajectories import build_trajectory_source, check_offline_dump


def latent_side(cfg: RootConfig) -> int:
    """Side of the teacher's states at `data.resolution`: pixels over the VAE's downsampling (1 in pixel space)."""
    return cfg.data.resolution // vae_downsample(size=cfg.vae.size, path=cfg.vae.path)


def latent_shape(cfg: RootConfig, teacher: Teacher) -> tuple[int, int, int]:
    """(C, H, W) of the trajectory states of this recipe's teacher, refused unless the teacher takes that size."""
    side = latent_side(cfg)
    teacher.spec.check_latent_side(teacher.model, side)
    return (teacher.in_channels, side, side)


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
    if teacher.spec.guidance == "embedded" and teacher.distilled_guidance:
        return float(cfg.diffusion.guidance_scale)
    return None


class Conditioner:
    """Batch -> (condition, null condition) for the teacher's family, on the run's device.

    Class-conditional families: the batch's labels; null = class `num_classes`. Text families: the encoders the
    family lists by slot (`family.text_encoders`: 't5' = text_encoder, 'clip' = pooled_encoder, 'clip_2' =
    pooled_encoder_2, 'qwen' = qwen_encoder) run on the captions, and the family combines their outputs
    (`family.assemble_condition`: T5 tokens + CLIP's pooled embedding for FLUX.1; CLIP-L ‖ CLIP-G tokens padded and
    prepended to T5's, pooled CLIP-L ‖ CLIP-G for SD3; Qwen2.5-VL's hidden states and mask for Qwen-Image); or T5
    embeddings precomputed in the shards (`t5_emb`/`t5_mask`, with `pooled_emb` where a 'clip' slot is listed; without
    the mask where the family attends to padding). Guidance (`family.guidance`): 'cfg' — the null condition is the
    condition of the family's `null_caption` (the empty caption; Qwen-Image's " "), encoded once (with precomputed
    embeddings and no evaluation
    of prompts, `for_eval` or `eval.every`, the encoders are loaded for that alone and then dropped); 'embedded' —
    every condition carries `diffusion.guidance_scale` as its guidance value and there is no null condition
    (`cfg_scale` is 1)."""

    def __init__(self, cfg: RootConfig, teacher: Teacher, device: torch.device | str = "cpu", *, for_eval=False):
        spec = teacher.spec
        self.kind, self.teacher, self.spec, self.device = teacher.condition_kind, teacher, spec, torch.device(device)
        self.encoder = self.tokenizer = self.null = None
        self.pooled_encoder = self.pooled_tokenizer = self.pooled_encoder_2 = self.pooled_tokenizer_2 = None
        self.qwen_encoder = self.qwen_tokenizer = None
        tec, pec, pec2, qec = cfg.text_encoder, cfg.pooled_encoder, cfg.pooled_encoder_2, cfg.qwen_encoder
        self.max_length, self.use_mask = tec.max_length, spec.text_mask
        self.qwen_max_length = qec.max_length
        self.pooled_max_length, self.pooled_max_length_2 = pec.max_length, pec2.max_length
        self.cfg_scale = 1.0 if spec.guidance == "embedded" else float(cfg.diffusion.guidance_scale)
        self.guidance = embedded_guidance(cfg, teacher)
        self.needs_pooled = "clip" in spec.text_encoders
        if self.kind != "text":
            return
        keep = for_eval or cfg.eval.every is not None or not tec.use_precomputed
        if not keep and self.cfg_scale == 1:
            return
        from ard_scale.models.text_encoder import build_qwen, build_t5, load_qwen, load_t5

        if "t5" in spec.text_encoders:
            self.encoder, self.tokenizer = load_t5(tec.path) if tec.path is not None else build_t5(tec.size)
            self.encoder.to(self.device)
        if "qwen" in spec.text_encoders:
            if qec.path is None and qec.size is None:
                raise ValueError(
                    f"a {teacher.family} teacher reads Qwen2.5-VL's hidden states: set qwen_encoder.path (the "
                    "pipeline's text_encoder/ and tokenizer/) or qwen_encoder.size"
                )
            # in the run's precision (QwenImagePipeline runs it in bf16): 8.3B parameters on every rank
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision]
            loaded = load_qwen(qec.path, dtype=dtype) if qec.path is not None else build_qwen(qec.size)
            self.qwen_encoder, self.qwen_tokenizer = loaded
            self.qwen_encoder.to(device=self.device, dtype=dtype)
        if self.needs_pooled:
            if pec.path is None and pec.size is None:
                raise ValueError(
                    f"a {teacher.family} teacher reads CLIP's pooled text embedding: set pooled_encoder.path (the "
                    "pipeline's text_encoder/ and tokenizer/) or pooled_encoder.size"
                )
            self.pooled_encoder, self.pooled_tokenizer = self._clip(pec, "pooled_encoder", 0)
        if "clip_2" in spec.text_encoders:
            if pec2.path is None and pec2.size is None:
                raise ValueError(
                    f"a {teacher.family} teacher reads a second CLIP text encoder: set pooled_encoder_2.path (the "
                    "pipeline's text_encoder_2/ and tokenizer_2/) or pooled_encoder_2.size"
                )
            self.pooled_encoder_2, self.pooled_tokenizer_2 = self._clip(pec2, "pooled_encoder_2", 1)
        if self.cfg_scale != 1:
            self.null = self._encode([spec.null_caption])
        if not keep:
            self.encoder = self.tokenizer = self.pooled_encoder = self.pooled_tokenizer = None
            self.pooled_encoder_2 = self.pooled_tokenizer_2 = self.qwen_encoder = self.qwen_tokenizer = None

    ENCODERS = ("encoder", "pooled_encoder", "pooled_encoder_2", "qwen_encoder")

    def partition(self, wrap) -> None:
        """Replace each loaded text encoder by `wrap(encoder)`: the trainer holds them in frozen ZeRO-3 engines
        (`zero.teacher_stage` 3), whose hooks gather each layer's weights as it runs, so every rank keeps 1/N of
        them. Encoding is then collective: every rank must encode the same number of times, as the step does."""
        for attr in self.ENCODERS:
            if getattr(self, attr) is not None:
                setattr(self, attr, wrap(getattr(self, attr)))

    @property
    def can_encode(self) -> bool:
        """Whether captions can be encoded here (the family's encoders are loaded)."""
        return self.encoder is not None or self.qwen_encoder is not None

    def _clip(self, section, key: str, seed: int):
        """(encoder, tokenizer) of one CLIP slot: a folder (or the pipeline folder's text_encoder[_2]/ and
        tokenizer[_2]/), or a named size (the second slot seeded apart from the first)."""
        from ard_scale.models.text_encoder import build_clip, load_clip

        projection = self.spec.clip_projection
        if section.path is not None:
            suffix = key[len("pooled_encoder") :]  # '' or '_2', as the pipeline folder numbers its encoders
            subfolders = (f"text_encoder{suffix}", f"tokenizer{suffix}")
            encoder, tokenizer = load_clip(section.path, projection=projection, subfolders=subfolders, key=key)
        else:
            encoder, tokenizer = build_clip(section.size, seed=seed, projection=projection, key=key)
        return encoder.to(self.device), tokenizer

    def __call__(self, batch: dict[str, Any]) -> tuple[Condition, Condition | None]:
        """The batch's condition and null condition (None when guidance needs none), on the run's device."""
        cond, null = self._conditions(batch)
        return cond.to(self.device), None if null is None else null.to(self.device)

    def _conditions(self, batch: dict[str, Any]) -> tuple[Condition, Condition | None]:
        if self.kind == "labels":
            if "labels" not in batch:
                raise ValueError(
                    "the class-conditional teacher needs class labels, but the data shards carry none; "
                    "write them with launchers/build_shards.py (a `label` per sample)"
                )
            labels = batch["labels"].long()
            check_labels(labels, batch.get("keys"), self.teacher.num_classes)
            return Condition(labels=labels), self.teacher.null_condition(labels.shape[0])
        precomputed = self.spec.precomputed_text and "t5_emb" in batch
        if precomputed and (not self.needs_pooled or "pooled_emb" in batch):
            text = batch["t5_emb"].float()
            mask = batch["t5_mask"] if self.use_mask else None
            pooled = batch["pooled_emb"].float() if self.needs_pooled else None
        elif not self.can_encode:
            wanted = "t5_emb and pooled_emb" if self.needs_pooled else "t5_emb"
            raise ValueError(
                f"text_encoder.use_precomputed is set but the shards carry no {wanted}; run "
                "launchers/precompute_text.py on them (with --pooled-encoder for a family that reads CLIP's pooled "
                "embedding) or set text_encoder.use_precomputed=false"
            )
        else:
            cond = self._encode(batch["captions"])
            text, mask, pooled = cond.text, cond.text_mask, cond.pooled
        B, L = text.shape[:2]
        cond = Condition(text=text, text_mask=mask, pooled=pooled, guidance=self._guidance(B))
        if self.null is None:  # no CFG: the null condition is never evaluated
            return cond, None
        null = self.null  # pad/crop to the batch's token count
        null_text = torch.nn.functional.pad(null.text, (0, 0, 0, max(0, L - null.text.shape[1])))[:, :L]
        null_mask = None
        if null.text_mask is not None:
            null_mask = torch.nn.functional.pad(null.text_mask, (0, max(0, L - null.text_mask.shape[1])))[:, :L]
            null_mask = null_mask.expand(B, -1)
        null_pooled = None if null.pooled is None else null.pooled.expand(B, -1)
        return cond, Condition(text=null_text.expand(B, -1, -1), text_mask=null_mask, pooled=null_pooled)

    def _guidance(self, batch_size: int) -> torch.Tensor | None:
        return None if self.guidance is None else torch.full((batch_size,), self.guidance)

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> Condition:
        """Captions -> their condition: each listed encoder's output, combined as the family's pipeline does."""
        from ard_scale.diffusion.condition import EncodedText
        from ard_scale.models.text_encoder import encode_captions, encode_clip, encode_qwen

        encoded = {}
        if self.encoder is not None:
            text, mask = encode_captions(
                self.encoder, self.tokenizer, captions, max_length=self.max_length, use_mask=self.use_mask
            )
            encoded["t5"] = EncodedText(tokens=text, mask=mask)
        if self.qwen_encoder is not None:
            encoded["qwen"] = encode_qwen(
                self.qwen_encoder, self.qwen_tokenizer, captions, max_length=self.qwen_max_length
            )
        if self.pooled_encoder is not None:
            encoded["clip"] = encode_clip(
                self.pooled_encoder, self.pooled_tokenizer, captions, max_length=self.pooled_max_length
            )
        if self.pooled_encoder_2 is not None:
            encoded["clip_2"] = encode_clip(
                self.pooled_encoder_2, self.pooled_tokenizer_2, captions, max_length=self.pooled_max_length_2
            )
        out = self.spec.assemble_condition(encoded)
        return Condition(text=out.tokens, text_mask=out.mask, pooled=out.pooled, guidance=self._guidance(len(captions)))


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
    # images <-> the teacher's states (replicated; GAN reals, eval decoding)
    codec: LatentCodec | FrameLatentCodec | PixelCodec
    trajectories: Any  # the step's trajectory source (ard_scale/trainer/trajectories.py); its state is per rank
    latent_shape: tuple[int, int, int]  # (C, H, W) of a trajectory state at data.resolution

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


def build_run(cfg: RootConfig, rank: int, world_size: int, *, adapt_ds_config=None, fresh: bool = True) -> Run:
    """`adapt_ds_config(ds_config) -> ds_config` lets the checkpoint manager switch on universal loading. `fresh`:
    the run has no checkpoint of its own, so `gan.init_from` (if set) initialises the student."""
    tr, zero = cfg.train, cfg.zero
    torch.manual_seed(tr.seed)  # identical student initialisation on every rank
    teacher = build_teacher_model(cfg)
    shape = latent_shape(cfg, teacher)
    check_channel_options(cfg, teacher)
    schedule = build_schedule(cfg, teacher.patch_size)
    guidance = embedded_guidance(cfg, teacher)
    student = ARDStudent(teacher, cfg.student, schedule, latent_shape=shape, guidance=guidance)
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
    if student.shares_teacher:  # a LoRA student holding the teacher's weights: the student engine partitions them
        teacher_engine = teacher
    elif zero.teacher_stage == 3:
        teacher_engine = build_frozen_engine(teacher, frozen_ds_config(micro_batch=micro, precision=tr.precision))
    else:
        teacher_engine = teacher.to(engine.device)  # replicated: every rank holds it whole on its device

    conditioner = Conditioner(cfg, teacher, engine.device)
    if zero.teacher_stage == 3:  # the frozen text encoders are partitioned like the teacher (in their own dtype)
        conditioner.partition(lambda encoder: _frozen_zero3(encoder, micro))

    names = {f.name for f in dataclasses.fields(ReaderConfig)}
    reader_cfg = ReaderConfig(**{k: v for k, v in dataclasses.asdict(cfg.data).items() if k in names})
    if tr.trajectory_source == "offline":
        from ard_scale.data.trajectories import trajectory_loader  # mosaicml-streaming: only offline runs import it

        reader_cfg = dataclasses.replace(reader_cfg, format="mds", path=cfg.data.trajectory_path)
        loader = trajectory_loader(reader_cfg, rank=rank, world_size=world_size)
        check_offline_dump(
            loader.meta,
            loader.sample_shape(),
            loader.condition_kind(),
            path=cfg.data.trajectory_path,
            student_times=schedule.grid(cfg.student.num_steps).tolist(),
            latent_shape=shape,
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
        conditioner=conditioner,
        codec=build_codec_for(cfg, teacher),
        trajectories=build_trajectory_source(tr.trajectory_source, tr.replay_times),
        latent_shape=shape,
    )
