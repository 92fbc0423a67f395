"""Qwen-Image's conditions from captions: Qwen2.5-VL's last hidden states under the prompt template, the template's
first 34 tokens dropped, with the per-sample mask, bit-exactly as QwenImagePipeline.encode_prompt builds them (then
zero-padded to qwen_encoder.max_length); the null condition is the model card's negative prompt " "; the recipe errors
for a missing encoder, precomputed shards and offline dumps; the encoder loads from a pipeline folder."""

import pytest
import torch
from diffusers import QwenImagePipeline

from ard_scale.config import ConfigError, load_config
from ard_scale.models.teachers import build_teacher
from ard_scale.models.text_encoder import QWEN_TEMPLATE, QWEN_TEMPLATE_TOKENS, build_qwen, encode_qwen
from ard_scale.trainer.build import build_conditioner, latent_shape

RECIPE = "recipes/tiny_qwen_image_cpu.yaml"
CAPTIONS = ["a handwritten digit seven", "a zero"]
MAX = 40  # longer than either caption's tokens: nothing is cut


def _pipeline(conditioner):
    return QwenImagePipeline(
        transformer=None, scheduler=None, vae=None,
        text_encoder=conditioner.encoders["qwen"].model, tokenizer=conditioner.encoders["qwen"].tokenizer,
    )  # fmt: skip


def _check_equal(cond_text, cond_mask, text, mask):
    """Ours (padded to MAX) against the pipeline's (padded to the batch's longest, mask None when all valid)."""
    L = text.shape[1]
    assert torch.equal(cond_text[:, :L], text) and not cond_text[:, L:].any()
    valid = torch.ones(text.shape[:2], dtype=torch.long) if mask is None else mask
    assert torch.equal(cond_mask[:, :L], valid) and not cond_mask[:, L:].any()


def test_captions_and_the_null_are_encoded_as_qwen_image_pipeline_encodes_its_prompt():
    cfg = load_config(RECIPE, [f"qwen_encoder.max_length={MAX}"])
    conditioner = build_conditioner(cfg, build_teacher("qwen_image", "debug"))
    cond, null = conditioner({"captions": CAPTIONS})
    pipe = _pipeline(conditioner)
    text, mask = pipe.encode_prompt(CAPTIONS, device="cpu", max_sequence_length=MAX)
    assert cond.text.shape == (2, MAX, 24) and mask is not None  # the two captions differ in length
    _check_equal(cond.text, cond.text_mask, text, mask)
    # the tokens kept are the caption's and the template's tail: the template's 34-token head is dropped
    tok = conditioner.encoders["qwen"].tokenizer
    lengths = [len(tok(QWEN_TEMPLATE.format(c)).input_ids) - QWEN_TEMPLATE_TOKENS for c in CAPTIONS]
    assert cond.text_mask.sum(1).tolist() == lengths
    # the null condition: the negative prompt " " (Qwen-Image's model card), encoded alone as the pipeline does
    neg_text, neg_mask = pipe.encode_prompt([" "], device="cpu", max_sequence_length=MAX)
    _check_equal(null.text[:1], null.text_mask[:1], neg_text, neg_mask)
    assert torch.equal(null.text[0], null.text[1]) and conditioner.cfg_scale == 4.0 and cond.pooled is None
    # cutting at max_sequence_length as the pipeline does
    short = encode_qwen(conditioner.encoders["qwen"].model, tok, CAPTIONS, max_length=5)
    text5, mask5 = pipe.encode_prompt(CAPTIONS, device="cpu", max_sequence_length=5)
    _check_equal(short.tokens, short.mask, text5, mask5)
    # each part is live: another caption changes the embedding
    other, _ = conditioner({"captions": ["a one", "a two"]})
    assert not torch.allclose(other.text[:, :4], cond.text[:, :4])


def test_the_recipe_names_what_qwen_image_needs():
    with pytest.raises(ConfigError, match="qwen_encoder.path: family 'qwen_image' reads Qwen2.5-VL's hidden states"):
        load_config(RECIPE, ["qwen_encoder.size=null"])
    # precompute_text.py writes the hidden states and the null caption's condition: no encoder needs naming
    load_config(RECIPE, ["text_encoder.use_precomputed=true", "qwen_encoder.size=null"])
    load_config(
        RECIPE, ["train.trajectory_source=offline", "data.trajectory_path=/nowhere"]
    )  # offline dumps store the text precompute_text.py writes for every family
    with pytest.raises(ConfigError, match=r"qwen_encoder.max_length: .*1024"):
        load_config(RECIPE, ["qwen_encoder.max_length=2000"])
    with pytest.warns(UserWarning, match="qwen_encoder is ignored: family 'flux'"):
        load_config("recipes/tiny_flux_cpu.yaml", ["qwen_encoder.size=debug"])
    with pytest.warns(UserWarning, match="text_encoder.path/size is ignored: family 'qwen_image' reads no T5"):
        load_config(RECIPE, ["text_encoder.size=debug"])
    teacher = build_teacher("qwen_image", "debug")
    assert latent_shape(load_config(RECIPE), teacher) == (4, 8, 8)  # 32 px through the 4× debug VAE


def test_the_encoder_loads_from_a_pipeline_folder_and_the_wrong_class_is_refused(tmp_path):
    encoder, tokenizer = build_qwen("debug", seed=3)
    encoder.save_pretrained(tmp_path / "qwen" / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "qwen" / "tokenizer")
    cfg = load_config(RECIPE, ["qwen_encoder.size=null", f"qwen_encoder.path={tmp_path / 'qwen'}"])
    conditioner = build_conditioner(cfg, build_teacher("qwen_image", "debug"))
    cond, _ = conditioner({"captions": CAPTIONS})
    ref = encode_qwen(encoder, tokenizer, CAPTIONS, max_length=cfg.qwen_encoder.max_length)
    assert torch.equal(cond.text, ref.tokens) and torch.equal(cond.text_mask, ref.mask)
    from ard_scale.models.text_encoder import build_t5

    t5, t5_tok = build_t5("debug")
    t5.save_pretrained(tmp_path / "t5")
    t5_tok.save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="holds a T5EncoderModel, but Qwen-Image reads a Qwen2_5_VL"):
        build_conditioner(load_config(RECIPE, ["qwen_encoder.size=null", f"qwen_encoder.path={tmp_path / 't5'}"]),
                    build_teacher("qwen_image", "debug"))  # fmt: skip
