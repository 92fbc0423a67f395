"""The recipe's model sections: the teacher, its text encoders and VAE, and the diffusion schedule it was trained
with. Each section's `problems()` returns 'field: what is wrong' lines (see ard_scale/config/schema.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ard_scale.config.loader import Range


def family_spec(name: str):
    """The registered family `name` (its facts: condition kind, text encoders), or None if unknown.

    The one place the config layer reads the family registry: families are pure model code (no deepspeed, no
    torch.distributed), imported here at validation time so that a new family needs no schema change."""
    from ard_scale.models.families import FAMILIES

    return FAMILIES.get(name)


# a family's text encoder slot (Family.text_encoders) -> the recipe section that configures it
SLOT_SECTIONS = {"t5": "text_encoder", "clip": "pooled_encoder", "clip_2": "pooled_encoder_2", "qwen": "qwen_encoder"}


def unnamed_encoders(cfg, spec) -> list[str]:
    """The sections of the encoders family `spec` reads that the recipe `cfg` gives neither a path nor a size (a run
    on precomputed text may name none)."""
    sections = [getattr(cfg, SLOT_SECTIONS[slot]) for slot in spec.text_encoders]
    return [
        SLOT_SECTIONS[slot]
        for slot, s in zip(spec.text_encoders, sections, strict=True)
        if s.path is None and s.size is None
    ]


def family_names() -> list[str]:
    from ard_scale.models.families import FAMILIES

    return list(FAMILIES)


def _one_source(size: str | None, path: str | None) -> list[str]:
    """The problem of a frozen component given both a named size (random weights) and a local folder."""
    if size is not None and path is not None:
        return ["size/path: set at most one (a named size for random weights, or a local folder)"]
    return []


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

    PATHS: ClassVar[tuple[str, ...]] = ("path",)  # ~ and $VAR expanded as read (config.loader.expand_path)
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
    """Read the text embeddings stored in the data shards (launchers/precompute_text.py) instead of running the
    encoders: every shard must carry them. False: the captions are encoded, even where the shards also carry
    embeddings (every rank reads text the same way: ZeRO-3 encoders gather collectively)."""
    precision: Literal["fp32", "run"] = "fp32"
    """T5's weights and compute: 'fp32' whatever train.precision, or 'run' for train.precision, as the diffusers
    pipelines run T5 in their dtype (FLUX.1, PixArt-Σ and SD3.5 in bf16): half the memory in a bf16 run (T5-XXL's
    4.8B parameters: 9.5 GB instead of 19, split over the ranks at zero.teacher_stage 3) and the pipeline's own
    prompt embeddings. Also what launchers/precompute_text.py --recipe encodes with."""

    PATHS: ClassVar[tuple[str, ...]] = ("path",)  # ~ and $VAR expanded as read (config.loader.expand_path)
    BOUNDS: ClassVar[dict[str, Range]] = {"max_length": Range(1, 8192)}

    def problems(self) -> list[str]:
        return _one_source(self.size, self.path)

    def dtype_name(self, run_precision: str) -> str:
        """The precision T5 runs in ('fp32', 'bf16' or 'fp16') in a run of train.precision `run_precision`."""
        return run_precision if self.precision == "run" else "fp32"


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

    PATHS: ClassVar[tuple[str, ...]] = ("path",)  # ~ and $VAR expanded as read (config.loader.expand_path)
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
        out = _one_source(self.size, self.path)
        _positive(out, "max_length", self.max_length)
        return out


@dataclass(kw_only=True)
class QwenEncoderConfig:
    """The frozen Qwen2.5-VL of Qwen-Image (the family's 'qwen' slot): its language model's last hidden states under
    QwenImagePipeline's prompt template are the caption's tokens (with their mask); unused by other families."""

    PATHS: ClassVar[tuple[str, ...]] = ("path",)  # ~ and $VAR expanded as read (config.loader.expand_path)
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
        return _one_source(self.size, self.path)


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

    PATHS: ClassVar[tuple[str, ...]] = ("path",)  # ~ and $VAR expanded as read (config.loader.expand_path)
    BOUNDS: ClassVar[dict[str, Range]] = {
        "scaling_factor": Range(0, 100, lo_open=True),  # SD 0.18, SD3 1.53
        "shift_factor": Range(-100, 100),  # FLUX.1 0.1159, SD3 0.0609
    }

    def problems(self) -> list[str]:
        return _one_source(self.size, self.path)


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
    """Recorded state at each student time: the noisy x_τ (the paper), the student's regression target. 'x0' (the
    re-implementation's teacher x̂0) is refused: the trainer regresses the noisy states only; the x̂0 can be stored
    beside them in a dump (launchers/dump_trajectories.py --record x0)."""
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
        if self.record == "x0":
            out.append(
                "record: 'x0' is not a training target here: the trainer regresses the teacher's noisy states x_τ; set "
                "diffusion.record=noisy (launchers/dump_trajectories.py --record x0 stores the teacher's x̂0 beside "
                "them in a dump)"
            )
        if self.dynamic_shift and self.base_seq_len >= self.max_seq_len:
            out.append(f"base_seq_len/max_seq_len: need base < max, got {self.base_seq_len}, {self.max_seq_len}")
        return out
