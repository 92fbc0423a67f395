"""The text encoders' named sizes (random weights at a size small enough for tests), as plain keyword arguments of
their transformers configs, with no model library imported: `ard_scale.models.text_encoder` builds them, the recipe
check (`ard_scale.config.teacher_fit.size_problems`) and the planner name the valid ones. `SLOT_SIZES`: a family's
text-encoder slot (`Family.text_encoders`) -> the sizes its recipe section may name."""

from __future__ import annotations

# Named sizes: T5Config keyword arguments. `debug` meets the debug PixArt teacher (caption_channels=24) and uses the
# byte-level ByT5 tokenizer, which needs no vocabulary file.
T5_SIZES: dict[str, dict] = {
    "debug": dict(vocab_size=384, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3),
}

# Named CLIP text-tower sizes: CLIPTextConfig keyword arguments. `debug` meets the debug FLUX teacher
# (pooled_projection_dim=16) and reads ByT5's byte ids: its end-of-text id is ByT5's `</s>` (1), so the pooled
# output is taken at the first `</s>`, as CLIP pools at its own end-of-text token. `debug_narrow` is SD3's second
# debug tower: with `debug` its token embeddings are 16 + 8 = 24 wide, the debug T5's width that SD3 pads them to.
_CLIP_BYTES = dict(vocab_size=384, max_position_embeddings=77, pad_token_id=0, bos_token_id=0, eos_token_id=1)
CLIP_SIZES: dict[str, dict] = {
    "debug": dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=16,
        **_CLIP_BYTES,
    ),
    "debug_narrow": dict(
        hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, projection_dim=8, **_CLIP_BYTES
    ),
}

# Named Qwen2.5-VL sizes: Qwen2_5_VLConfig text_config / vision_config keyword arguments. `debug` meets the debug
# Qwen-Image teacher (joint_attention_dim=24); its mRoPE sections sum to half its head width (12).
QWEN_SIZES: dict[str, dict] = {
    "debug": dict(
        text_config=dict(
            vocab_size=512,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=2048,
            rope_scaling={"type": "mrope", "mrope_section": [2, 2, 2]},
        ),
        vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=24, fullatt_block_indexes=[0]
        ),
    ),
}

SLOT_SIZES: dict[str, dict[str, dict]] = {"t5": T5_SIZES, "clip": CLIP_SIZES, "clip_2": CLIP_SIZES, "qwen": QWEN_SIZES}
