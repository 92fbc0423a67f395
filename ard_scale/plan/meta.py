"""The recipe's models on the meta device (architectures only, no weights allocated) and their example inputs:
the teacher, the T5 and Qwen2.5-VL text encoders, from the recipe's local folders' config.json where they are on this
machine, else from the family's named size for the recipe's resolution (a planning machine without the weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ard_scale.config import RootConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import schedule_for_recipe
from ard_scale.errors import UserError
from ard_scale.models.encoder_sizes import QWEN_SIZES, T5_SIZES
from ard_scale.models.families import get_family
from ard_scale.models.teachers import Teacher, build_teacher
from ard_scale.models.vae import vae_downsample

# PixArt-Σ's text encoder: the T5-v1.1-XXL encoder (google/t5-v1_1-xxl).
T5_XXL = dict(
    d_model=4096,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    d_kv=64,
    vocab_size=32128,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
)
# Qwen-Image's text encoder: Qwen2.5-VL-7B-Instruct (Qwen2_5_VLConfig text_config / vision_config).
QWEN25_VL_7B = dict(
    text_config=dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        tie_word_embeddings=False,
    ),
    vision_config=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        fullatt_block_indexes=[7, 15, 23, 31],
    ),  # fmt: skip
)


def _config_file(path: str | None, sub: str) -> Path | None:
    if path is None:
        return None
    for folder in (Path(path), Path(path) / sub):
        if (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def meta_teacher(cfg: RootConfig) -> tuple[Teacher, str]:
    """The recipe's teacher on the meta device, and where its architecture came from."""
    t = cfg.teacher
    if t.size is not None:
        return build_teacher(t.family, t.size, device="meta"), f"named size {t.size!r}"
    config_file = _config_file(t.path, "transformer")
    if config_file is not None:
        model_class = get_family(t.family).model_class
        config = model_class.load_config(config_file.parent)
        with torch.device("meta"):
            model = model_class.from_config(config)
        return Teacher(model).eval().requires_grad_(False), f"{config_file}"
    spec = get_family(t.family)
    size = spec.default_sizes.get(cfg.data.resolution)
    if size is None:
        raise UserError(
            f"teacher.path {t.path!r} has no config.json here and there is no default {t.family} size for "
            f"resolution {cfg.data.resolution}; give teacher.size=<one of {', '.join(spec.sizes)}>"
        )
    teacher = build_teacher(t.family, size, device="meta", **spec.size_overrides(t.num_classes))
    return teacher, f"named size {size!r} (teacher.path {t.path} not found here)"


def meta_text_encoder(cfg: RootConfig) -> tuple[nn.Module | None, str]:
    """The T5 encoder on meta when the recipe runs one (None for class-conditional or precomputed embeddings)."""
    te, family = cfg.text_encoder, get_family(cfg.teacher.family)
    if "t5" not in family.text_encoders or te.use_precomputed:
        return None, "none"
    from transformers import T5Config, T5EncoderModel

    config_file = _config_file(te.path, family.encoder_folders["t5"])
    if config_file is not None:
        config, source = T5Config.from_json_file(config_file), str(config_file)
    elif te.size in T5_SIZES:  # the encoder `build_t5` trains with
        config, source = T5Config(**T5_SIZES[te.size]), f"named size {te.size!r}"
    else:
        config, source = T5Config(**T5_XXL), f"T5-v1.1-XXL encoder (text_encoder.path {te.path} not found here)"
    with torch.device("meta"):
        model = T5EncoderModel(config)
    return model.eval().requires_grad_(False), source


def meta_qwen_encoder(cfg: RootConfig) -> tuple[nn.Module | None, str]:
    """Qwen2.5-VL on meta when the family reads it (Qwen-Image) and the shards do not carry its output
    (text_encoder.use_precomputed), from qwen_encoder.path's config where it is here."""
    family = get_family(cfg.teacher.family)
    if "qwen" not in family.text_encoders or cfg.text_encoder.use_precomputed:
        return None, "none"
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    qe = cfg.qwen_encoder
    config_file = _config_file(qe.path, family.encoder_folders["qwen"])
    if config_file is not None:
        config, source = Qwen2_5_VLConfig.from_json_file(config_file), str(config_file)
    elif qe.size in QWEN_SIZES:
        config, source = Qwen2_5_VLConfig(**QWEN_SIZES[qe.size]), f"named size {qe.size!r}"
    else:
        config = Qwen2_5_VLConfig(**QWEN25_VL_7B)
        source = f"Qwen2.5-VL-7B-Instruct (qwen_encoder.path {qe.path} not found here)"
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model.eval().requires_grad_(False), source


def latent_side(cfg: RootConfig) -> int:
    """The states' side at data.resolution: read from the VAE's config where it is on this machine, else the 8×
    downsampling of the SD/FLUX VAEs (the trainer, `ard_scale.trainer.build.latent_side`, always reads it)."""
    return cfg.data.resolution // vae_downsample(size=cfg.vae.size, path=cfg.vae.path, missing=8)


def build_schedule(cfg: RootConfig, patch_size: int = 2):
    return schedule_for_recipe(cfg.diffusion, latent_side(cfg), patch_size)


def caption_tokens(cfg: RootConfig) -> int:
    """Tokens per caption of the encoder whose hidden states the teacher reads, as the trainer pads them: Qwen2.5-VL's
    qwen_encoder.max_length where the family reads it (Qwen-Image), else T5's text_encoder.max_length (a family's
    example condition adds tokens of its own, as SD3's 77 CLIP tokens)."""
    family = get_family(cfg.teacher.family)
    return cfg.qwen_encoder.max_length if "qwen" in family.text_encoders else cfg.text_encoder.max_length


def example_inputs(teacher: Teacher, cfg: RootConfig, batch: int, dtype) -> tuple[torch.Tensor, Condition, int]:
    """(latents (B, C, h, w), condition, latent side) on meta at the recipe's resolution."""
    side = latent_side(cfg)
    x = torch.empty(batch, teacher.in_channels, side, side, device="meta", dtype=dtype)
    return x, teacher.example_condition(batch, "meta", caption_tokens(cfg), dtype), side
