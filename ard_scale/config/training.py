"""The recipe's training sections: optimisation, ZeRO, checkpoints, the GAN stage, evaluation and logging. Each
section's `problems()` returns 'field: what is wrong' lines (see ard_scale/config/schema.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ard_scale.config.loader import BATCH, STEPS, Range
from ard_scale.utils.noise import MAX_KEY


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

    PATHS: ClassVar[tuple[str, ...]] = ("run_dir",)  # ~ and $VAR expanded as read (config.loader.expand_path)
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

    PATHS: ClassVar[tuple[str, ...]] = ("init_from",)  # ~ and $VAR expanded as read (config.loader.expand_path)
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

    PATHS: ClassVar[tuple[str, ...]] = (  # ~ and $VAR expanded as read (config.loader.expand_path)
        "fid_inception_path",
        "fid_reference_path",
        "clip_path",
        "prompts_path",
        "cache_dir",
    )
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
        if self.fid_inception_path is not None and self.num_samples < 2:  # else the first evaluation fails
            out.append(
                f"num_samples: FID (fid_inception_path is set) needs >= 2 generated images for a covariance, got "
                f"{self.num_samples}; raise num_samples or set fid_inception_path to null"
            )
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
