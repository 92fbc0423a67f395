"""The recipe tree: one keyword-only dataclass per section, a docstring per field, required fields without defaults.
The sections live beside this root: config/models.py (teacher, encoders, VAE, diffusion), config/ard.py (student),
config/data.py (data) and config/training.py (train, zero, checkpoint, gan, eval, log).

A component receives its own section (e.g. the student model gets `cfg.student`), never the root. Each section's
`problems()` returns 'field: what is wrong' lines; `RootConfig.problems()` adds the cross-section checks, and
`RootConfig.ignored()` the settings another setting makes irrelevant (reported as a warning, not an error).
Checks that need a built model (e.g. student.num_causal_layers <= teacher depth) belong to the model factory.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ard_scale.config import loader
from ard_scale.config.ard import ARDConfig
from ard_scale.config.data import DataConfig
from ard_scale.config.models import (
    DiffusionConfig,
    PooledEncoderConfig,
    QwenEncoderConfig,
    TeacherConfig,
    TextEncoderConfig,
    VAEConfig,
    family_spec,
)
from ard_scale.config.training import CheckpointConfig, EvalConfig, GANConfig, LogConfig, TrainConfig, ZeroConfig


class ConfigWarning(UserWarning):
    """A setting that has no effect because of another setting."""


@dataclass(kw_only=True)
class RootConfig:
    """A whole recipe."""

    teacher: TeacherConfig
    """The frozen teacher network."""
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """T5 encoder of a text-to-image teacher."""
    pooled_encoder: PooledEncoderConfig = field(default_factory=PooledEncoderConfig)
    """CLIP text tower of a teacher that reads a pooled text embedding (FLUX.1; SD3's CLIP-L)."""
    pooled_encoder_2: PooledEncoderConfig = field(default_factory=PooledEncoderConfig)
    """Second CLIP text tower of a teacher that reads two (SD3: CLIP-G)."""
    qwen_encoder: QwenEncoderConfig = field(default_factory=QwenEncoderConfig)
    """Qwen2.5-VL of a teacher that reads its hidden states (Qwen-Image)."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """Autoencoder of a latent-space teacher."""
    student: ARDConfig = field(default_factory=ARDConfig)
    """The ARD student (S, N, mask, heads, output parameterisation)."""
    diffusion: DiffusionConfig
    """Schedule and teacher trajectory."""
    data: DataConfig
    """Training shards."""
    train: TrainConfig
    """Optimisation."""
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    """DeepSpeed ZeRO."""
    checkpoint: CheckpointConfig
    """Run directory and checkpoints."""
    gan: GANConfig = field(default_factory=GANConfig)
    """Adversarial fine-tuning."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    log: LogConfig = field(default_factory=LogConfig)
    """Logging."""

    def problems(self) -> list[str]:
        """Cross-section impossible combinations, as 'dotted.key: what is wrong' lines."""
        out = []
        t, tr, d = self.teacher, self.train, self.data
        te = self.text_encoder
        spec = family_spec(t.family)
        reads_t5 = spec is not None and "t5" in spec.text_encoders
        if reads_t5 and te.path is None and te.size is None and not te.use_precomputed:
            out.append(
                f"text_encoder.path: family {t.family!r} needs captions encoded: set text_encoder.path to a local T5 "
                "folder (or text_encoder.size) or text_encoder.use_precomputed=true"
            )
        # precomputed shards replace the encoders; whether they also hold CFG's null condition (else the encoders are
        # needed once, for the null caption) is a question about files: ard_scale.config.paths checks it
        qe = self.qwen_encoder
        if (
            spec is not None
            and "qwen" in spec.text_encoders
            and qe.path is None
            and qe.size is None
            and not te.use_precomputed
        ):
            out.append(
                f"qwen_encoder.path: family {t.family!r} reads Qwen2.5-VL's hidden states: set qwen_encoder.path to "
                "the pipeline folder (its text_encoder/ and tokenizer/) or qwen_encoder.size"
            )
        pe = self.pooled_encoder
        if (
            spec is not None
            and "clip" in spec.text_encoders
            and pe.path is None
            and pe.size is None
            and not te.use_precomputed
        ):
            out.append(
                f"pooled_encoder.path: family {t.family!r} reads CLIP's pooled text embedding beside the T5 "
                "tokens: set pooled_encoder.path to the pipeline's CLIP text encoder folder (FLUX.1: its "
                "text_encoder/ and tokenizer/), or pooled_encoder.size, or text_encoder.use_precomputed=true with "
                "shards written by launchers/precompute_text.py"
            )
        pe2 = self.pooled_encoder_2
        if (
            spec is not None
            and "clip_2" in spec.text_encoders
            and pe2.path is None
            and pe2.size is None
            and not te.use_precomputed
        ):
            out.append(
                f"pooled_encoder_2.path: family {t.family!r} reads a second CLIP text encoder (SD3: CLIP-G): set "
                "pooled_encoder_2.path to the pipeline folder (its text_encoder_2/ and tokenizer_2/) or "
                "pooled_encoder_2.size"
            )
        if spec is not None and spec.condition_kind == "labels" and self.text_encoder.use_precomputed:
            out.append(
                f"text_encoder.use_precomputed: family {t.family!r} is class-conditional and has no text embeddings"
            )
        if tr.trajectory_source == "offline" and d.trajectory_path is None:
            out.append("data.trajectory_path: required with train.trajectory_source 'offline'")
        if tr.trajectory_source != "offline" and d.path is None:
            out.append(
                f"data.path: required with train.trajectory_source {tr.trajectory_source!r} (it gives the conditions)"
            )
        if self.gan.enabled and d.path is None:
            out.append("data.path: gan.enabled needs real images; give image shards")
        if self.gan.enabled and tr.grad_accum > 1:
            out.append(
                "train.grad_accum: gan.enabled trains on one micro-batch per step; set train.grad_accum=1 (and raise "
                "data.batch_size instead)"
            )
        if self.gan.enabled and self.gan.warmup_steps >= tr.max_steps:
            out.append(
                f"gan.warmup_steps: {self.gan.warmup_steps} warm-up steps with the GAN weight at 0 in a run of "
                f"train.max_steps={tr.max_steps}: the adversarial loss would never switch on and the GAN stage would "
                "be plain regression; lower gan.warmup_steps (a few steps for a short run from gan.init_from) or "
                "raise train.max_steps"
            )
        if self.gan.enabled and tr.trajectory_source == "offline":
            out.append(
                "train.trajectory_source: 'offline' streams stored trajectories, which carry no real images for "
                "gan.enabled; use 'online' or 'replay' for the GAN stage"
            )
        if d.buckets and tr.trajectory_source == "offline":
            out.append(
                "data.buckets: offline trajectories keep the one size they were dumped at; set data.buckets=false, or "
                "use train.trajectory_source 'online' to distil on the buckets"
            )
        if d.buckets and self.diffusion.schedule == "flow" and self.diffusion.dynamic_shift:
            out.append(
                "data.buckets: diffusion.dynamic_shift sets the shift from the image token count at data.resolution, "
                "and the buckets' counts differ (each would need its own student grid); set data.buckets=false, or "
                "diffusion.dynamic_shift=false with a fixed diffusion.shift"
            )
        if d.buckets and self.gan.enabled and tr.trajectory_source == "replay":
            out.append(
                "data.buckets: with gan.enabled and train.trajectory_source 'replay', a replayed trajectory keeps its "
                "bucket while each step's real images come from a new batch (another bucket); use 'online' for the "
                "GAN stage, or data.buckets=false"
            )
        if tr.loss_weights is not None and len(tr.loss_weights) != self.student.num_steps:
            out.append(
                f"train.loss_weights: {len(tr.loss_weights)} weights for student.num_steps={self.student.num_steps}; "
                "give one per student step or null"
            )
        if tr.global_batch_size is not None and tr.global_batch_size % (d.batch_size * tr.grad_accum):
            out.append(
                f"train.global_batch_size: {tr.global_batch_size} is not a multiple of data.batch_size × "
                f"train.grad_accum = {d.batch_size * tr.grad_accum}"
            )
        return out

    def ignored(self) -> list[str]:
        """Settings that have no effect because of another setting (a warning, not an error)."""
        out = []
        spec = family_spec(self.teacher.family)
        if spec is not None and "t5" not in spec.text_encoders and (self.text_encoder.path or self.text_encoder.size):
            out.append(f"text_encoder.path/size is ignored: family {self.teacher.family!r} reads no T5 encoder")
        qe = self.qwen_encoder
        if spec is not None and "qwen" not in spec.text_encoders and (qe.path is not None or qe.size is not None):
            out.append(f"qwen_encoder is ignored: family {self.teacher.family!r} reads no Qwen2.5-VL")
        if self.vae.path is None and self.vae.size is None and self.vae.scaling_factor is not None:
            out.append("vae.scaling_factor is ignored: no VAE (pixel space)")
        if self.vae.path is None and self.vae.size is None and self.vae.shift_factor is not None:
            out.append("vae.shift_factor is ignored: no VAE (pixel space)")
        pe = self.pooled_encoder
        if spec is not None and "clip" not in spec.text_encoders and (pe.path is not None or pe.size is not None):
            out.append(f"pooled_encoder is ignored: family {self.teacher.family!r} reads no pooled text embedding")
        pe2 = self.pooled_encoder_2
        if spec is not None and "clip_2" not in spec.text_encoders and (pe2.path is not None or pe2.size is not None):
            out.append(f"pooled_encoder_2 is ignored: family {self.teacher.family!r} reads no second CLIP encoder")
        if self.train.trajectory_source != "replay" and self.train.replay_times != 1:
            out.append(f"train.replay_times is ignored with trajectory_source {self.train.trajectory_source!r}")
        if self.gan.init_from is not None and not self.gan.enabled:
            out.append(
                f"gan.init_from={self.gan.init_from!r} is ignored: gan.enabled is false, so the student starts from "
                "the teacher's weights, not that run's; add gan.enabled=true for the GAN stage"
            )
        gan, gan_default = self.gan, GANConfig()
        if gan.adaptive and gan.weight != gan_default.weight:
            out.append(
                f"gan.weight={gan.weight} is ignored: gan.adaptive computes the weight (scale it with "
                "gan.adaptive_lambda), or set gan.adaptive=false for a fixed weight"
            )
        if not gan.adaptive and (gan.adaptive_lambda, gan.adaptive_max) != (
            gan_default.adaptive_lambda,
            gan_default.adaptive_max,
        ):
            out.append("gan.adaptive_lambda/adaptive_max are ignored: gan.adaptive is false (the weight is gan.weight)")
        d, d_default = self.diffusion, DiffusionConfig(schedule="flow", prediction_type="flow", guidance_scale=1)
        if d.dynamic_shift and d.shift != d_default.shift:
            out.append(
                f"diffusion.shift={d.shift} is ignored: diffusion.dynamic_shift sets the shift from the image token "
                "count (base_shift/max_shift); set dynamic_shift=false for a static shift"
            )
        curve = ("base_shift", "max_shift", "base_seq_len", "max_seq_len")
        changed = [k for k in curve if getattr(d, k) != getattr(d_default, k)]
        if not d.dynamic_shift and changed:
            out.append(
                f"diffusion.{'/'.join(changed)} is ignored without diffusion.dynamic_shift (the static shift is "
                "diffusion.shift); add diffusion.dynamic_shift=true for the resolution-dependent shift"
            )
        lora = self.student.lora
        shared = lora.enabled and lora.share_teacher  # the teacher's weights are the student engine's, at zero.stage
        if self.zero.gather_teacher_once and (self.zero.stage < 3 if shared else self.zero.teacher_stage == 0):
            held = f"zero.stage {self.zero.stage} (share_teacher)" if shared else "zero.teacher_stage 0"
            out.append(f"zero.gather_teacher_once is ignored: {held} keeps the teacher whole")
        if self.diffusion.guide_first_channels is not None and self.diffusion.guidance_scale == 1:
            out.append("diffusion.guide_first_channels is ignored: guidance_scale 1 means no guidance")
        if shared and self.zero.teacher_stage != self.zero.stage:
            out.append(
                f"zero.teacher_stage {self.zero.teacher_stage} is ignored: a LoRA student with share_teacher holds the "
                f"teacher's weights in its own engine, at zero.stage {self.zero.stage}"
            )
        if self.student.mask != "window" and self.student.window != ARDConfig().window:
            out.append(f"student.window is ignored with student.mask {self.student.mask!r}")
        return out


# Keys that do not change what is trained: where the run is written, how often it logs/evaluates/saves, worker
# counts, the step budget (extending a run is a resume, not a new run) and memory placement. Everything else
# — teacher and its paths, schedule, student, data, optimiser, precision, ZeRO stages, GAN — defines the run.
NOT_HASHED: tuple[str, ...] = (
    "checkpoint",
    "eval",
    "log",
    "data.num_workers",
    "data.prefetch_factor",
    "data.chunk_size",  # how many samples a worker decodes at a time: the stream and its positions do not change
    "data.cache_dir",
    "train.max_steps",
    "train.max_consecutive_nan",
    "zero.gather_teacher_once",
    "zero.offload_optimizer",
    "zero.offload_params",
    "student.lora.share_teacher",  # one copy of the base weights or two: the same numbers, other memory
    "student.attention",  # flex or sdpa history attention: the same numbers (to rounding), another kernel
    "gan.divergence_factor",  # the watchdog's threshold and whether it stops the run: what its warning advises to
    "gan.stop_on_divergence",  # change on resume, and neither changes a number the run computes
)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> RootConfig:
    """Load a recipe with dotted overrides (CLI > YAML > defaults); raises ConfigError listing every problem and
    warns (ConfigWarning) about settings made irrelevant by others."""
    cfg = loader.load(RootConfig, path, overrides)
    ignored = cfg.ignored()
    if ignored:
        warnings.warn("; ".join(ignored), ConfigWarning, stacklevel=2)
    return cfg


def config_from_dict(data: dict, source: str = "<dict>") -> RootConfig:
    """Build a RootConfig from a plain dict (e.g. one stored in a checkpoint); raises ConfigError."""
    return loader.from_dict(RootConfig, data, source)


def training_dict(cfg: RootConfig | dict) -> dict[str, Any]:
    """The flattened {dotted.key: value} of the fields that define the training run (all but NOT_HASHED)."""
    flat = loader.flatten(loader.to_dict(cfg))
    return {k: v for k, v in flat.items() if not any(k == x or k.startswith(x + ".") for x in NOT_HASHED)}


def config_hash(cfg: RootConfig | dict) -> str:
    """Stable 16-hex-digit hash of training_dict(cfg); stored in checkpoints to refuse another recipe's run."""
    return loader.dict_hash(training_dict(cfg))


def with_defaults(saved: RootConfig | dict) -> RootConfig | dict:
    """A checkpoint's config with today's defaults for the keys it lacks: a key absent from a config written by an
    earlier ard_scale is a setting that version did not have, which behaved as its default does (a new setting's
    default keeps the old behaviour). Without this every resume after an upgrade that added a setting was refused as a
    recipe change ('<absent> -> default'). A config that no longer loads (a setting since removed or renamed) is
    compared as written, so the difference is named."""
    if isinstance(saved, RootConfig):
        return saved
    try:
        return config_from_dict(saved, "the checkpoint's config.yaml")
    except loader.ConfigError:
        return saved


def recipe_changes(saved: RootConfig | dict, current: RootConfig | dict) -> list[str]:
    """Training-defining dotted keys that differ between a checkpoint's config and the current one (keys the
    checkpoint's config lacks count as their defaults: `with_defaults`)."""
    return loader.diff_configs(training_dict(with_defaults(saved)), training_dict(current))


def schedule_moved(saved: dict, current: dict) -> str | None:
    """What a changed train.max_steps does to a run resumed under a decaying LR schedule (None: nothing). The step
    budget is not part of the recipe hash — extending a run is a resume —, but a linear or cosine schedule decays to
    0 at max_steps, and DeepSpeed's scheduler keeps only its step count: the resumed run's learning rate follows the
    new end from the resumed step on, a jump where the two curves differ."""
    old, new = saved.get("train", {}), current.get("train", {})
    schedule = new.get("lr_schedule")
    if schedule not in ("linear", "cosine") or old.get("lr_schedule") != schedule:
        return None
    if old.get("max_steps") == new.get("max_steps"):
        return None
    return (
        f"train.max_steps changed from {old.get('max_steps')} to {new.get('max_steps')} on resume of a run with "
        f"train.lr_schedule {schedule}: the learning rate now decays to 0 at step {new.get('max_steps')}, so it "
        f"changes at the resumed step instead of following the run's curve; resume with "
        f"train.max_steps={old.get('max_steps')} to keep it"
    )
