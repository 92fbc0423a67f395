"""The family contract: everything that differs between teacher families, behind one interface.

A family is one module under `ard_scale/models/families/` defining a `Family` subclass and registering it
(`ard_scale.models.families.register`). Code outside this package asks the family; it never branches on a name.

What a family owns:
- the diffusers class and its named sizes (`debug` trains a step on CPU in seconds; real sizes build on `meta`);
- shape facts: latent channels, the pixels-per-token of its patching, its depth in blocks;
- the kind of condition (`labels` or `text`), the null condition, which text encoders it needs;
- the teacher's denoiser call (`denoise`) and the GAN feature pass (`features`), through submodule calls;
- the student's computation over G groups: `prepare_student` (heads, block forwards or attention processors),
  `student_forward` (teacher-forced, all S groups at once), `student_sample` (autoregressive, KV cache in the lowest
  N blocks) and `student_features` (one group, as the teacher runs it).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import nn

from ard_scale.diffusion.condition import Condition, EncodedText
from ard_scale.errors import UserError

ConditionKind = Literal["labels", "text"]


class _DiffusersClass:
    """`Family.model_class`: the `diffusers` class named `model_class_name`, imported on first use, so that reading a
    family's facts (the recipe check, `python -m ard_scale.config`) does not import diffusers (about 5 s)."""

    def __get__(self, obj, owner: type[Family]) -> type:
        import diffusers

        return getattr(diffusers, owner.model_class_name)


class Family:
    """Base of every teacher family; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    # The network's class, by its name in `diffusers` (e.g. "FluxTransformer2DModel"); `model_class` imports it. A
    # family of a class from elsewhere sets `model_class` to the class itself, and `model_class_name` to its name.
    model_class_name: ClassVar[str]
    model_class: ClassVar[type] = _DiffusersClass()
    sizes: ClassVar[dict[str, dict]]
    condition_kind: ClassVar[ConditionKind]
    # The frozen encoders a caption goes through, by slot: 't5' (recipe section text_encoder), 'clip'
    # (pooled_encoder), 'clip_2' (pooled_encoder_2); `assemble_condition` combines their outputs.
    text_encoders: ClassVar[tuple[str, ...]] = ()  # e.g. ("t5",), ("t5", "clip") or ("t5", "clip", "clip_2")
    # Where the family's diffusers pipeline folder keeps each slot's encoder (its tokenizer in the sibling numbered
    # alike, text_encoder_2/ -> tokenizer_2/): an encoder's recipe path may be that pipeline folder.
    encoder_folders: ClassVar[dict[str, str]] = {}
    # True: the CLIP towers are CLIPTextModelWithProjection and their pooled output is the projected `text_embeds`
    # (SD3). False: CLIPTextModel's `pooler_output` (FLUX.1).
    clip_projection: ClassVar[bool] = False
    default_sizes: ClassVar[dict[int, str]] = {}  # resolution in pixels -> the named size the planner falls back to
    description: ClassVar[str] = ""
    joint_attention: ClassVar[bool] = False  # text tokens take part in self-attention (MMDiT): one copy per group
    # 'cfg': diffusion.guidance_scale is classifier-free guidance (a null-condition pass per solver step).
    # 'embedded': it is the value a guidance-distilled network embeds (FLUX.1-dev; see `distilled_guidance`): no
    # null condition, no second pass, and the student is conditioned on the same value.
    guidance: ClassVar[Literal["cfg", "embedded"]] = "cfg"
    # The caption whose condition is the null condition of CFG (the pipeline's default or model-card negative prompt).
    null_caption: ClassVar[str] = ""
    # What the family's pipeline does to a caption before tokenizing it ('as given': FluxPipeline,
    # StableDiffusion3Pipeline, QwenImagePipeline; PixArtSigmaPipeline lower-cases and strips): `preprocess_captions`
    # applies it, and precomputed text records it (text_encoding.json).
    captions: ClassVar[Literal["as given", "lower-cased and stripped"]] = "as given"
    # True: the teacher reads the T5 attention mask (PixArt). False: it attends to all max_length tokens, and the
    # encoder runs without a mask, as FluxPipeline does.
    text_mask: ClassVar[bool] = True

    # Module-name suffixes inside a block that a LoRA student adapts by default (student.lora.targets: null): the
    # attention projections (self, cross and MMDiT text-stream ones) and the MLP's, as diffusers names them.
    lora_targets: ClassVar[tuple[str, ...]] = (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_add_out",
        "ff.net.0.proj",
        "ff.net.2",
        "ff_context.net.0.proj",
        "ff_context.net.2",
    )

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def size_overrides(cls, num_classes: int | None) -> dict:
        """Keyword overrides of the diffusers class a recipe's `teacher.num_classes` implies."""
        return {}

    @classmethod
    def width_overrides(cls, width: int) -> dict:
        """Keyword overrides of the diffusers class for a transformer `width` wide (heads of 32), e.g. for
        launchers/fit_teacher.py; a family whose other widths must match (PixArt's cross-attention) adds them."""
        return {"num_attention_heads": max(1, width // 32), "attention_head_dim": min(32, width)}

    @classmethod
    def pixel_overrides(cls, channels: int, resolution: int) -> dict:
        """Keyword overrides of the diffusers class for a pixel-space teacher of `channels` channels at `resolution`
        px (launchers/fit_teacher.py): the adaLN DiTs predict learned-sigma channels beside their target."""
        return {"in_channels": channels, "out_channels": 2 * channels, "sample_size": resolution}

    @classmethod
    def check_model(cls, model: nn.Module) -> None:
        """Raise for a model of this class that the family does not support (with the reason and the fix)."""

    # -- shape facts ---------------------------------------------------------------------------------------------
    @classmethod
    def in_channels(cls, model: nn.Module) -> int:
        return model.config.in_channels

    @classmethod
    def out_channels(cls, model: nn.Module) -> int:
        return model.out_channels

    @classmethod
    def patch_size(cls, model: nn.Module) -> int:
        """Latent pixels per token side: H and W of a state must be multiples of it."""
        return model.config.patch_size

    @classmethod
    def sample_size(cls, model: nn.Module) -> int:
        return model.config.sample_size

    @classmethod
    def check_latent_side(cls, model: nn.Module, side: int) -> None:
        """Raise unless the network takes side×side latents (a fixed positional embedding: its own sample size)."""
        if side != cls.sample_size(model):
            raise UserError(
                f"data.resolution gives {side}×{side} latents, but this {cls.name} teacher takes "
                f"{cls.sample_size(model)}×{cls.sample_size(model)} (its positional embedding is fixed); set "
                "data.resolution to the teacher's resolution (latent side × the VAE's downsampling)",
                every_rank=True,
            )

    @classmethod
    def check_latent_size(cls, model: nn.Module, height: int, width: int) -> None:
        """Raise unless the network takes height×width latents (an aspect-ratio bucket, a pipeline call): by default
        when it takes each side (`check_latent_side`), so a fixed positional embedding takes its square only."""
        for side in dict.fromkeys((height, width)):
            cls.check_latent_side(model, side)

    @classmethod
    def other_aspects(cls, model: nn.Module) -> int | None:
        """For a message: the latent multiple of non-square sizes the network takes beside its squares, where its
        squares alone do not say so (PixArt); None otherwise."""
        return None

    @classmethod
    def blocks(cls, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks in input-to-output order (N counts from the first)."""
        return list(model.transformer_blocks)

    @classmethod
    def named_blocks(cls, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """(name within the model, block) for every block of `blocks`, e.g. for LoRA targets."""
        names = {id(m): n for n, m in model.named_modules()}
        return [(names[id(b)], b) for b in cls.blocks(model)]

    @classmethod
    def depth(cls, model: nn.Module) -> int:
        return len(cls.blocks(model))

    @classmethod
    def config_depth(cls, config: dict) -> int:
        """`depth` of the network `config` describes (its diffusers config, or a named size's keyword arguments),
        without building it: the recipe check reads it without importing diffusers."""
        return config["num_layers"]

    @classmethod
    def width(cls, model: nn.Module) -> int:
        return model.config.num_attention_heads * model.config.attention_head_dim

    @classmethod
    def num_classes(cls, model: nn.Module) -> int | None:
        return None

    @classmethod
    def distilled_guidance(cls, model: nn.Module) -> bool:
        """Whether the network embeds the guidance scale itself (FLUX.1-dev), so trajectories need no CFG pass."""
        return False

    @classmethod
    def text_dim(cls, model: nn.Module) -> int | None:
        """Width of the caption embedding the teacher reads (None for class-conditional families)."""
        return None

    # -- conditions ----------------------------------------------------------------------------------------------
    @classmethod
    def null_condition(cls, model: nn.Module, batch_size: int, device=None) -> Condition:
        raise UserError(
            f"a {cls.name} teacher's null condition is the empty caption's text embedding; encode '' instead"
        )

    @classmethod
    def assemble_condition(cls, encoded: dict[str, EncodedText]) -> EncodedText:
        """The condition's text (tokens, mask) and pooled embedding from each encoder slot's output on the same
        captions, as the teacher's own pipeline combines them. Default: the T5 tokens and mask; the 'clip' slot's
        pooled embedding where the family lists one."""
        t5 = encoded["t5"]
        pooled = encoded["clip"].pooled if "clip" in encoded else None
        return EncodedText(tokens=t5.tokens, mask=t5.mask, pooled=pooled)

    @classmethod
    def preprocess_captions(cls, captions: list[str]) -> list[str]:
        """The captions as the family's pipeline hands them to its tokenizers (`captions`)."""
        if cls.captions == "lower-cased and stripped":
            return [c.lower().strip() for c in captions]
        return list(captions)

    @classmethod
    def example_condition(cls, model: nn.Module, batch: int, device, text_tokens: int, dtype=None) -> Condition:
        """A condition of the right shapes (zeros/empty) for counting FLOPs or planning memory."""
        raise NotImplementedError

    @classmethod
    def check_condition(cls, cond: Condition, who: str = "teacher") -> None:
        if cls.condition_kind == "labels" and cond.labels is None:
            raise UserError(f"a class-conditional ({cls.name}) {who} needs class labels, got a text condition")
        if cls.condition_kind == "text" and cond.text is None:
            raise UserError(f"a text-to-image ({cls.name}) {who} needs text embeddings, got class labels")

    @classmethod
    def guide(cls, out_c: torch.Tensor, out_u: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance of the conditional and null predictions (B, C, H, W), as the family's pipeline
        combines them: out_u + w·(out_c − out_u) by default."""
        return out_u + scale * (out_c - out_u)

    # -- the teacher -----------------------------------------------------------------------------------------------
    @classmethod
    def denoise(cls, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Native output (B, C_out, H, W) for x_t (B, C, H, W) at model times t (B,)."""
        raise NotImplementedError

    @classmethod
    def features(cls, model, x_t, t, cond, layers: list[int]) -> list[torch.Tensor]:
        raise NotImplementedError

    # -- the student -----------------------------------------------------------------------------------------------
    @classmethod
    def prepare_student(cls, student: nn.Module) -> nn.Module:
        """Adapt `student.backbone` (a trainable copy of the teacher's model) and return the head to copy S times."""
        raise NotImplementedError

    @classmethod
    def student_forward(cls, student, states: torch.Tensor, cond: Condition) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def student_sample(cls, student, noise: torch.Tensor, cond: Condition) -> list[torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def student_features(cls, student, x_t, t, cond, layers: list[int]) -> list[torch.Tensor]:
        raise NotImplementedError
