"""The recipe tree: one keyword-only dataclass per section, a docstring per field, required fields without defaults.

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
from typing import Any, ClassVar, Literal

from ard_scale.config import loader
from ard_scale.config.ard import ARDConfig
from ard_scale.config.data import DataConfig
from ard_scale.config.loader import BATCH, STEPS, Range
from ard_scale.utils.noise import MAX_KEY


class ConfigWarning(UserWarning):
    """A setting that has no effect because of another setting."""


def family_spec(name: str):
    """The registered family `name` (its facts: condition kind, text encoders), or None if unknown.

    The one place the config layer reads the family registry: families are pure model code (no deepspeed, no
    torch.distributed), imported here at validation time so that a new family needs no schema change."""
    from ard_scale.models.families import FAMILIES

    return FAMILIES.get(name)


def family_names() -> list[str]:
    from ard_scale.models.families import FAMILIES

    return list(FAMILIES)


def _positive(out: list[str], name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero) or value != value:  # value != value: NaN
        out.append(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(kw_only=True)
class TeacherConfig:
    """The frozen teacher network (loaded from a local diffusers folder, or built at a named size for tests)."""

    family: str
    """A registered teacher family (ard_scale/models/families/): 'dit' (class-conditional DiT, adaLN), 'pixart'
    (PixArt-Σ-style text-to-image DiT with T5 cross-attention), 'flux' (FLUX.1 flow-matching MMDiT)."""
    size: str | None = None
    """Named architecture built with random weights (e.g. 'debug', 'dit_xl_2_256', 'pixart_sigma_1024'); the model
    factory lists valid names. Exactly one of size/path."""
    path: str | None = None
    """Local diffusers-format folder holding the teacher's config and weights. Exactly one of size/path."""
    num_classes: int | None = None
    """Classes of a class-conditional ('dit') teacher, e.g. 1000 for ImageNet; must be null for 'pixart'."""

    BOUNDS: ClassVar[dict[str, Range]] = {"num_classes": Range(1, 2**20)}

    def problems(self) -> list[str]:
        out = []
        if (self.size is None) == (self.path is None):
            out.append("size/path: set exactly one (a named size for random weights, or a local folder)")
        spec = family_spec(self.family)
        if spec is None:
            out.append(f"family: unknown teacher family {self.family!r}; choose one of {', '.join(family_names())}")
        elif spec.condition_kind == "labels" and self.num_classes is None:
            out.append(f"num_classes: required for family {self.family!r} (e.g. 1000 for ImageNet)")
        elif spec.condition_kind == "text" and self.num_classes is not None:
            out.append(f"num_classes: must be null for family {self.family!r} (it is text-conditioned)")
        return out


@dataclass(kw_only=True)
class TextEncoderConfig:
    """The frozen T5 text encoder of a text-to-image teacher (unused by 'dit')."""

    size: str | None = None
    """Named architecture built with random weights (e.g. 'debug': a tiny T5 with a byte tokenizer); at most one of
    size/path."""
    path: str | None = None
    """Local folder with the T5 encoder and its tokenizer (transformers format); at most one of size/path; both
    null only with use_precomputed."""
    max_length: int = 300
    """Tokens per caption (PixArt-Σ: 300); longer captions are truncated."""
    use_precomputed: bool = False
    """Read T5 embeddings stored in the data shards instead of running the encoder."""

    BOUNDS: ClassVar[dict[str, Range]] = {"max_length": Range(1, 8192)}

    def problems(self) -> list[str]:
        out = []
        if self.size is not None and self.path is not None:
            out.append("size/path: set at most one (a named size for random weights, or a local folder)")
        return out


@dataclass(kw_only=True)
class PooledEncoderConfig:
    """A frozen CLIP text tower a teacher reads beside its T5 tokens: `pooled_encoder` is the family's 'clip' slot
    (FLUX.1: CLIP-L's pooled embedding; SD3: CLIP-L, the pipeline's `text_encoder`), `pooled_encoder_2` its 'clip_2'
    slot (SD3: CLIP-G, the pipeline's `text_encoder_2`); unused by families that do not list the slot.

    Why one section per encoder slot rather than a list of encoders: each frozen encoder of a teacher pipeline is one
    typed section, with its own path, size and token count, named after the slot the family's `text_encoders` lists,
    so recipes stay flat dotted keys (`pooled_encoder_2.path=...`) that the strict loader checks, FLUX recipes are
    unchanged, and the family alone says how the slots' outputs combine (`Family.assemble_condition`). A teacher
    with another kind of encoder (Qwen-Image's Qwen2.5-VL) adds its own typed section and slot the same way."""

    BOUNDS: ClassVar[dict[str, Range]] = {"max_length": Range(1, 8192)}

    size: str | None = None
    """Named architecture built with random weights ('debug': a tiny CLIP text model on byte ids); at most one of
    size/path."""
    path: str | None = None
    """Local folder with the CLIP text model and its tokenizer, or a diffusers pipeline folder holding
    `text_encoder/` and `tokenizer/` (for pooled_encoder_2: `text_encoder_2/` and `tokenizer_2/`); both null only
    with text_encoder.use_precomputed (shards with `pooled_emb`) where the family allows it."""
    max_length: int = 77
    """Tokens per caption (CLIP: 77; SD3 pads both towers to 77); longer captions are truncated."""

    def problems(self) -> list[str]:
        out = []
        if self.size is not None and self.path is not None:
            out.append("size/path: set at most one (a named size for random weights, or a local folder)")
        _positive(out, "max_length", self.max_length)
        return out


@dataclass(kw_only=True)
class QwenEncoderConfig:
    """The frozen Qwen2.5-VL of Qwen-Image (the family's 'qwen' slot): its language model's last hidden states under
    QwenImagePipeline's prompt template are the caption's tokens (with their mask); unused by other families."""

    BOUNDS: ClassVar[dict[str, Range]] = {"max_length": Range(1, 1024)}

    size: str | None = None
    """Named architecture built with random weights ('debug': a tiny Qwen2.5-VL with a tiny byte-level Qwen2
    tokenizer); at most one of size/path."""
    path: str | None = None
    """Local folder with Qwen2_5_VLForConditionalGeneration and its tokenizer, or a QwenImagePipeline folder holding
    `text_encoder/` and `tokenizer/`."""
    max_length: int = 512
    """Caption tokens kept after the template (QwenImagePipeline's max_sequence_length: 512 by default, at most
    1024); every caption is padded to it, with a mask."""

    def problems(self) -> list[str]:
        out = []
        if self.size is not None and self.path is not None:
            out.append("size/path: set at most one (a named size for random weights, or a local folder)")
        return out


@dataclass(kw_only=True)
class VAEConfig:
    """The autoencoder between pixels and the teacher's latent space (only for real images and decoding)."""

    size: str | None = None
    """Named architecture built with random weights (e.g. 'debug'); at most one of size/path."""
    path: str | None = None
    """Local diffusers AutoencoderKL folder; size and path both null = the teacher works in pixel space."""
    scaling_factor: float | None = None
    """Latent scale; null = read it from the VAE's config (e.g. 0.18215 for SD's VAE)."""
    shift_factor: float | None = None
    """Latent shift, latents = (posterior mean − shift) · scale; null = the VAE config's `shift_factor` (FLUX.1's
    VAE: 0.1159), or 0 where it has none."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "scaling_factor": Range(0, 100, lo_open=True),  # SD 0.18, SD3 1.53
        "shift_factor": Range(-100, 100),  # FLUX.1 0.1159, SD3 0.0609
    }

    def problems(self) -> list[str]:
        out = []
        if self.size is not None and self.path is not None:
            out.append("size/path: set at most one (a named size for random weights, or a local folder)")
        return out


@dataclass(kw_only=True)
class DiffusionConfig:
    """The teacher's noise schedule and the sampler that records its trajectory on the student grid."""

    schedule: Literal["vp", "flow"]
    """'vp': discrete variance-preserving (DiT, PixArt); 'flow': rectified flow / flow matching (SD3-style)."""
    prediction_type: Literal["epsilon", "v_prediction", "flow"]
    """The teacher's native output: 'epsilon' or 'v_prediction' for 'vp', 'flow' (velocity) for 'flow'."""
    num_train_timesteps: int = 1000
    """T of the discrete VP schedule (ignored for 'flow')."""
    beta_start: float = 1e-4
    """First β of the linear VP schedule (DiT and PixArt: 1e-4)."""
    beta_end: float = 0.02
    """Last β of the linear VP schedule (DiT and PixArt: 0.02)."""
    solver: Literal["ddim", "euler", "heun", "dpm++2m"] = "ddim"
    """Deterministic ODE solver of the teacher trajectory."""
    substeps: int = 6
    """K: teacher solver steps inside each student interval; the teacher takes student.num_steps × K steps in all
    (the teacher grid must contain the student grid)."""
    guidance_scale: float
    """Classifier-free guidance scale w of the teacher (1 = no guidance; DiT-XL/2: 1.5). Distilled into the
    student, which samples without a CFG pass."""
    guide_first_channels: int | None = None
    """Apply guidance only to the first C latent channels (DiT's reference sampler: 3 of 4); null = all."""
    record: Literal["noisy", "x0"] = "noisy"
    """Recorded state at each student time: the noisy x_τ (the paper) or the teacher's x̂0 (the re-implementation)."""
    shift: float = 1.0
    """'flow' only: static time shift s of the sigma grid, σ' = s·σ / (1 + (s-1)·σ) (SD3: 3.0; 1 = none)."""
    dynamic_shift: bool = False
    """'flow' only: FluxPipeline's resolution-dependent shift, s = exp(μ) with μ linear in the image token count
    between (base_seq_len, base_shift) and (max_seq_len, max_shift); replaces `shift`."""
    base_shift: float = 0.5
    """μ at base_seq_len image tokens (FLUX.1: 0.5)."""
    max_shift: float = 1.15
    """μ at max_seq_len image tokens (FLUX.1: 1.15)."""
    base_seq_len: int = 256
    """Image tokens at which μ = base_shift (FLUX.1: 256)."""
    max_seq_len: int = 4096
    """Image tokens at which μ = max_shift (FLUX.1: 4096)."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "num_train_timesteps": Range(1, 10**5),
        "beta_start": Range(0, 1, lo_open=True, hi_open=True),
        "beta_end": Range(0, 1, lo_open=True, hi_open=True),
        "substeps": Range(1, 10**4),
        "guidance_scale": Range(0, 100),
        "guide_first_channels": Range(1, 4096),  # against the latent's channels: at build time
        "shift": Range(0, 1000, lo_open=True),
        "base_shift": Range(-20, 20),  # μ, a log-shift
        "max_shift": Range(-20, 20),
        "base_seq_len": Range(1, 2**24),
        "max_seq_len": Range(1, 2**24),
    }

    def problems(self) -> list[str]:
        out = []
        if self.schedule == "vp" and self.prediction_type == "flow":
            out.append("prediction_type: 'flow' needs schedule 'flow' (for 'vp' choose 'epsilon' or 'v_prediction')")
        if self.schedule == "flow" and self.prediction_type != "flow":
            out.append(f"prediction_type: {self.prediction_type!r} needs schedule 'vp' (for 'flow' choose 'flow')")
        if self.beta_start >= self.beta_end:
            out.append(f"beta_start/beta_end: need beta_start < beta_end, got {self.beta_start}, {self.beta_end}")
        if self.schedule != "flow" and (self.shift != 1.0 or self.dynamic_shift):
            out.append("shift/dynamic_shift: time shifts apply to schedule 'flow' only")
        if self.dynamic_shift and self.base_seq_len >= self.max_seq_len:
            out.append(f"base_seq_len/max_seq_len: need base < max, got {self.base_seq_len}, {self.max_seq_len}")
        return out


@dataclass(kw_only=True)
class TrainConfig:
    """The student's optimisation."""

    max_steps: int
    """Optimizer steps in total (rerunning with a larger value continues a finished run)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    global_batch_size: int | None = None
    """If set, the trainer stops unless data.batch_size × ranks × grad_accum equals it (pins a recipe's batch)."""
    lr: float
    """Peak learning rate of the student's AdamW."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up, to 0 at max_steps ('constant' keeps the peak)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 (over at least 2 steps once a schedule is active: DeepSpeed's floor)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (β1, β2)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this; null = no clipping."""
    ema_decay: float | None = 0.9999
    """Decay of the student's EMA (per ZeRO partition); null = no EMA."""
    seed: int = 0
    """Seed of initialisation and of per-step noise (keyed on global step and rank), 0 .. 2**22-1."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Compute precision of student and teacher (master weights stay fp32)."""
    activation_checkpointing: bool = False
    """Recompute the student's block activations in backward to save memory."""
    trajectory_source: Literal["online", "replay", "offline"] = "online"
    """'online': the teacher solves a fresh trajectory every step; 'replay': each trajectory is reused
    replay_times times; 'offline': read from data.trajectory_path."""
    replay_times: int = 1
    """R: steps each trajectory is reused for with trajectory_source='replay'."""
    loss_weights: list[float] | None = None
    """Per-student-step weights of the regression loss (length student.num_steps); null = equal weights."""
    max_consecutive_nan: int = 10
    """Non-finite-loss steps in a row that are skipped before the run saves a checkpoint and stops."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "max_steps": STEPS,
        "grad_accum": Range(1, 2**16),
        "global_batch_size": Range(1, 2**31 - 1),
        "lr": Range(0, 1, lo_open=True),  # AdamW: the update is about lr per step, whatever the gradient scale
        "warmup_steps": Range(0, 10**9),
        "weight_decay": Range(0, 10),
        "betas": Range(0, 1, hi_open=True),
        "grad_clip": Range(0, 1e6, lo_open=True),
        "ema_decay": Range(0, 1, hi_open=True),
        "seed": Range(0, MAX_KEY),  # a 22-bit key of the noise streams (ard_scale/utils/noise.py)
        "replay_times": Range(0, 10**6),  # >= 1 needed with trajectory_source replay only: problems()
        "max_consecutive_nan": Range(1, 10**6),
    }

    def problems(self) -> list[str]:
        out = []
        if self.trajectory_source == "replay" and self.replay_times < 1:
            out.append(f"replay_times: must be >= 1 with trajectory_source 'replay', got {self.replay_times}")
        if self.loss_weights is not None and (
            any(not w >= 0 for w in self.loss_weights) or sum(self.loss_weights) <= 0
        ):
            out.append(f"loss_weights: need weights >= 0 with a positive sum, got {self.loss_weights}")
        return out


@dataclass(kw_only=True)
class ZeroConfig:
    """DeepSpeed ZeRO settings."""

    stage: Literal[0, 1, 2, 3] = 3
    """ZeRO stage of the student engine (3: parameters, gradients and optimizer state partitioned)."""
    teacher_stage: Literal[0, 3] = 3
    """ZeRO stage of the frozen teacher and T5 engines (no optimizer): 3 partitions them, 0 replicates them."""
    gather_teacher_once: bool = False
    """Gather the teacher's parameters once per trajectory batch instead of once per solver step (costs the full
    teacher in memory on every rank; `python -m ard_scale.plan` says whether it fits)."""
    offload_optimizer: bool = False
    """Keep the student's optimizer state in CPU memory (stage >= 1)."""
    offload_params: bool = False
    """Keep the student's parameters in CPU memory (stage 3)."""

    def problems(self) -> list[str]:
        out = []
        if self.offload_optimizer and self.stage < 1:
            out.append("offload_optimizer: needs stage >= 1")
        if self.offload_params and self.stage != 3:
            out.append(f"offload_params: needs stage 3, got stage {self.stage}")
        return out


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where the run lives and how it is saved; rerunning the same command resumes from the newest checkpoint."""

    run_dir: str
    """Run directory: checkpoints, resolved config, metrics.jsonl, TensorBoard, samples."""
    every: int = 1000
    """Save every this many optimizer steps (and always on a stop signal and at the end)."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted."""
    allow_recipe_change: bool = False
    """Resume a checkpoint written under a different training-defining config (see config_hash) instead of
    refusing it."""

    BOUNDS: ClassVar[dict[str, Range]] = {"every": STEPS, "keep_last": Range(1, 10**6)}


@dataclass(kw_only=True)
class GANConfig:
    """The R+G stage: discriminator heads on hidden states of a feature backbone, adaptive weight (DESIGN §1)."""

    enabled: bool = False
    """Add the adversarial loss (needs real images in data.path)."""
    backbone: Literal["student", "teacher"] = "student"
    """Feature backbone of the heads: the student itself, or the frozen teacher (the re-implementation)."""
    layers: list[int] | None = None
    """Backbone block indices that get a head; null = every block."""
    loss: Literal["hinge", "non_saturating"] = "hinge"
    """Adversarial objective."""
    warmup_steps: int = 3000
    """Steps with GAN weight 0 before the adversarial loss starts."""
    adaptive: bool = True
    """Weight = ‖∇L_R‖/‖∇L_G‖ at the student's output activation, clamped to [0, adaptive_max], × adaptive_lambda."""
    adaptive_lambda: float = 0.1
    """λ of the adaptive weight: the GAN gradient at the output is λ × the regression gradient. Below 1 the regression
    term dominates (the default, safe on small runs and weak teachers); the re-implementation's 10 suits a converged
    regression run on a good teacher (recipes/imagenet_256.yaml) and drove the debug T2I walkthrough's regression
    loss up 135× in 30 steps."""
    adaptive_max: float = 1e4
    """Upper clamp of the gradient-norm ratio."""
    weight: float = 1.0
    """Fixed GAN weight when adaptive is false."""
    d_lr: float = 1e-3
    """Discriminator learning rate."""
    d_betas: tuple[float, float] = (0.0, 0.99)
    """Adam betas of the discriminator heads."""
    head_hidden: int = 256
    """Channels of each discriminator head's convolutions (and of its conditioning projection)."""
    r1_weight: float = 0.0
    """Approximate R1 penalty on reals, E[(D(x) - D(x + r1_sigma·ε))²] (no double backward); 0 = off."""
    r1_sigma: float = 0.01
    """Perturbation scale of the approximate R1 penalty."""
    init_from: str | None = None
    """A run directory (e.g. the regression stage's) whose latest checkpoint initialises the student."""
    init_from_ema: bool = True
    """Initialise from that checkpoint's EMA weights (else its raw weights)."""
    divergence_factor: float | None = 3.0
    """Watchdog: warn once when the regression loss (smoothed over ~10 steps) exceeds this factor times its value when
    the GAN term switched on; null = off."""
    stop_on_divergence: bool = False
    """With the watchdog firing: save a checkpoint and stop with an error instead of only warning."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "warmup_steps": Range(0, 10**9),
        "adaptive_lambda": Range(0, 1e6),
        "adaptive_max": Range(0, 1e9, lo_open=True),
        "weight": Range(0, 1e6),
        "d_lr": Range(0, 1, lo_open=True),
        "d_betas": Range(0, 1, hi_open=True),
        "divergence_factor": Range(1, 1e6, lo_open=True),
        "head_hidden": Range(1, 2**16),
        "r1_weight": Range(0, 1e6),
        "r1_sigma": Range(0, 100, lo_open=True),
        "layers": Range(0, 10**4),
    }

    def problems(self) -> list[str]:
        out = []
        if self.layers is not None:
            if not self.layers:
                out.append("layers: empty list; give block indices or null for every block")
            if len(set(self.layers)) != len(self.layers):
                out.append(f"layers: repeated block index in {self.layers}")
        return out


@dataclass(kw_only=True)
class EvalConfig:
    """In-loop evaluation (FID, CLIP score, sample grids); the offline evaluator reads the same section."""

    every: int | None = None
    """Evaluate every this many steps; null = never in the loop."""
    num_samples: int = 1000
    """Generated images per evaluation (split across ranks)."""
    batch_size: int = 16
    """Generation batch per rank."""
    use_ema: bool = True
    """Evaluate the EMA weights (if train.ema_decay is set) rather than the raw student."""
    fid_inception_path: str | None = None
    """Local Inception weights for FID; null = no FID."""
    fid_reference_path: str | None = None
    """Precomputed reference statistics (.npz with mu, sigma) for FID; null = computed once from data.path."""
    fid_reference_num_images: int = 10000
    """Real images (the first in data.path's storage order) behind computed reference statistics."""
    clip_path: str | None = None
    """Local open_clip weights for CLIP score: a folder with open_clip_config.json, or a checkpoint file (then name
    clip_model); null = no CLIP score."""
    clip_model: str | None = None
    """open_clip architecture of the checkpoint file at clip_path (e.g. 'ViT-L-14'); not needed for a folder."""
    prompts_path: str | None = None
    """Text file of prompts (one a line) for T2I grids and CLIP score; null = captions from the data."""
    grid_size: int = 16
    """Images in the sample grid written each evaluation."""
    cache_dir: str | None = None
    """Where FID reference statistics and the teacher's metrics are cached, keyed on what defines them (share it
    between runs of a recipe); null = RUN_DIR/eval/cache."""

    BOUNDS: ClassVar[dict[str, Range]] = {
        "every": STEPS,
        "num_samples": Range(1, 10**7),
        "batch_size": BATCH,
        "fid_reference_num_images": Range(2, 10**8),  # a covariance needs 2 images
        "grid_size": Range(0, 4096),
    }

    def problems(self) -> list[str]:
        out = []
        if self.clip_model is not None and self.clip_path is None:
            out.append("clip_model: set without clip_path; give the local checkpoint file in clip_path")
        return out


@dataclass(kw_only=True)
class LogConfig:
    """Progress and metrics (RUN_DIR/metrics.jsonl always)."""

    every: int = 10
    """Log metrics every this many steps."""
    tensorboard: bool = True
    """Rank 0 also writes the scalars of metrics.jsonl as TensorBoard events under RUN_DIR/tensorboard."""
    progress_bar: bool = True
    """Rank-0 progress bar (step, loss, samples/s, ETA)."""

    BOUNDS: ClassVar[dict[str, Range]] = {"every": STEPS}


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
        text_family = spec is not None and spec.condition_kind == "text"
        reads_t5 = spec is not None and "t5" in spec.text_encoders
        if reads_t5 and te.path is None and te.size is None and not te.use_precomputed:
            out.append(
                f"text_encoder.path: family {t.family!r} needs captions encoded: set text_encoder.path to a local T5 "
                "folder (or text_encoder.size) or text_encoder.use_precomputed=true"
            )
        if (
            reads_t5
            and spec.guidance == "cfg"
            and te.use_precomputed
            and te.path is None
            and te.size is None
            and self.diffusion.guidance_scale != 1
        ):
            out.append(
                "text_encoder.path: guidance needs the empty caption's T5 embedding, which precomputed shards do not "
                "hold; give text_encoder.path (the encoder runs once, for the empty caption) or guidance_scale 1"
            )
        qe = self.qwen_encoder
        if spec is not None and "qwen" in spec.text_encoders and qe.path is None and qe.size is None:
            out.append(
                f"qwen_encoder.path: family {t.family!r} reads Qwen2.5-VL's hidden states: set qwen_encoder.path to "
                "the pipeline folder (its text_encoder/ and tokenizer/) or qwen_encoder.size"
            )
        pe = self.pooled_encoder
        if spec is not None and "clip" in spec.text_encoders and pe.path is None and pe.size is None:
            if not te.use_precomputed:
                out.append(
                    f"pooled_encoder.path: family {t.family!r} reads CLIP's pooled text embedding beside the T5 "
                    "tokens: set pooled_encoder.path to the pipeline's CLIP text encoder folder (FLUX.1: its "
                    "text_encoder/ and tokenizer/), or pooled_encoder.size, or text_encoder.use_precomputed=true with "
                    "shards written by launchers/precompute_text.py --pooled-encoder"
                )
        pe2 = self.pooled_encoder_2
        if spec is not None and "clip_2" in spec.text_encoders and pe2.path is None and pe2.size is None:
            out.append(
                f"pooled_encoder_2.path: family {t.family!r} reads a second CLIP text encoder (SD3: CLIP-G): set "
                "pooled_encoder_2.path to the pipeline folder (its text_encoder_2/ and tokenizer_2/) or "
                "pooled_encoder_2.size"
            )
        if spec is not None and text_family and te.use_precomputed and not spec.precomputed_text:
            out.append(
                f"text_encoder.use_precomputed: family {t.family!r} conditions on more than the precomputed t5_emb "
                "and pooled_emb columns (SD3: CLIP token embeddings too) or on others (Qwen-Image: Qwen2.5-VL hidden "
                "states), which launchers/precompute_text.py does not write; set text_encoder.use_precomputed=false"
            )
        if text_family and set(spec.text_encoders) != {"t5"} and tr.trajectory_source == "offline":
            out.append(
                f"train.trajectory_source: offline dumps store T5 embeddings only, and family {t.family!r} reads "
                f"{' + '.join(spec.text_encoders)}; use 'online' or 'replay'"
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
        if self.zero.gather_teacher_once and self.zero.teacher_stage == 0:
            out.append("zero.gather_teacher_once is ignored: zero.teacher_stage 0 keeps the teacher whole")
        if self.diffusion.guide_first_channels is not None and self.diffusion.guidance_scale == 1:
            out.append("diffusion.guide_first_channels is ignored: guidance_scale 1 means no guidance")
        lora = self.student.lora
        if lora.enabled and lora.share_teacher and self.zero.teacher_stage != self.zero.stage:
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
    "data.cache_dir",
    "train.max_steps",
    "train.max_consecutive_nan",
    "zero.gather_teacher_once",
    "zero.offload_optimizer",
    "zero.offload_params",
    "student.lora.share_teacher",  # one copy of the base weights or two: the same numbers, other memory
    "student.attention",  # flex or sdpa history attention: the same numbers (to rounding), another kernel
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


def recipe_changes(saved: RootConfig | dict, current: RootConfig | dict) -> list[str]:
    """Training-defining dotted keys that differ between a checkpoint's config and the current one."""
    return loader.diff_configs(training_dict(saved), training_dict(current))
