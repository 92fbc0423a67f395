"""SD3's conditions from captions: CLIP-L ‖ CLIP-G token embeddings padded to T5's width and prepended to the T5
tokens, pooled CLIP-L ‖ CLIP-G, exactly as StableDiffusion3Pipeline.encode_prompt builds them, the empty prompt as
the CFG null condition (the pipeline's default negative prompt), and the recipe errors for missing encoders,
precomputed shards, mismatched CLIP lengths and folders of the wrong CLIP class."""

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from ard_scale.config import ConfigError, load_config
from ard_scale.models.teachers import build_teacher
from ard_scale.models.text_encoder import build_clip
from ard_scale.trainer.build import build_conditioner, latent_shape

RECIPE = "recipes/tiny_sd3_cpu.yaml"
CAPTIONS = ["a handwritten digit seven", "a zero"]
CLIP77 = ["pooled_encoder.max_length=77", "pooled_encoder_2.max_length=77"]  # the pipeline pads CLIP to 77


def _pipeline(conditioner):
    return StableDiffusion3Pipeline(
        transformer=None, scheduler=None, vae=None,
        text_encoder=conditioner.encoders["clip"].model, tokenizer=conditioner.encoders["clip"].tokenizer,
        text_encoder_2=conditioner.encoders["clip_2"].model, tokenizer_2=conditioner.encoders["clip_2"].tokenizer,
        text_encoder_3=conditioner.encoders["t5"].model, tokenizer_3=conditioner.encoders["t5"].tokenizer,
    )  # fmt: skip


def test_captions_and_the_null_are_encoded_as_stable_diffusion_3_pipeline_encodes_its_prompt():
    cfg = load_config(RECIPE, CLIP77)
    conditioner = build_conditioner(cfg, build_teacher("sd3", "debug"))
    cond, null = conditioner({"captions": CAPTIONS})
    text, neg_text, pooled, neg_pooled = _pipeline(conditioner).encode_prompt(
        CAPTIONS, None, None, device="cpu", max_sequence_length=cfg.text_encoder.max_length
    )
    assert cond.text.shape == (2, 77 + 8, 24) and cond.pooled.shape == (2, 16 + 8)
    assert torch.equal(cond.text, text) and torch.equal(cond.pooled, pooled)
    # the null condition is the pipeline's default negative prompt "": encoded once, exactly the pipeline's one-prompt
    # negative embeddings, and the batch's within the encoders' batch-size rounding
    _, one_neg_text, _, one_neg_pooled = _pipeline(conditioner).encode_prompt(
        [""], None, None, device="cpu", max_sequence_length=cfg.text_encoder.max_length
    )
    assert torch.equal(null.text, one_neg_text.expand(2, -1, -1)) and torch.equal(
        null.pooled, one_neg_pooled.expand(2, -1)
    )
    torch.testing.assert_close(null.text, neg_text, rtol=0, atol=1e-6)
    torch.testing.assert_close(null.pooled, neg_pooled, rtol=0, atol=1e-6)
    assert cond.text_mask is None and null.text_mask is None  # SD3 attends to every token, padding included
    assert conditioner.cfg_scale == 4.5 and cond.guidance is None  # true CFG, nothing embedded
    # each part is live: the two CLIP towers differ, and another caption changes both tokens and pooled
    assert not torch.equal(cond.text[:, :77, :16], cond.text[:, :77, 8:])
    assert torch.equal(cond.text[:, :77, 24:], torch.zeros(2, 77, 0))  # (16 + 8 fills T5's 24 exactly)
    other, _ = conditioner({"captions": ["a one", "a two"]})
    assert not torch.allclose(other.pooled, cond.pooled) and not torch.allclose(other.text[:, 77:], cond.text[:, 77:])


def test_the_recipe_names_what_sd3_needs():
    with pytest.raises(ConfigError, match="pooled_encoder_2.path: family 'sd3' reads a second CLIP text encoder"):
        load_config(RECIPE, ["pooled_encoder_2.size=null"])
    with pytest.raises(ConfigError, match="pooled_encoder.path: family 'sd3' reads CLIP's pooled"):
        load_config(RECIPE, ["pooled_encoder.size=null"])
    # precompute_text.py writes CLIP ‖ T5 tokens and the null caption's condition: no encoder needs naming (the
    # recipe check asks for them where the shards lack that null condition: tests/unit/trainer/test_conditioner.py)
    sections = ("text_encoder", "pooled_encoder", "pooled_encoder_2")
    load_config(RECIPE, ["text_encoder.use_precomputed=true", *(f"{s}.size=null" for s in sections)])
    load_config(
        RECIPE, ["train.trajectory_source=offline", "data.trajectory_path=/nowhere"]
    )  # offline dumps store the text precompute_text.py writes for every family
    with pytest.warns(UserWarning, match="pooled_encoder_2 is ignored: family 'flux'"):
        load_config("recipes/tiny_flux_cpu.yaml", ["pooled_encoder_2.size=debug"])
    cfg = load_config(RECIPE, ["pooled_encoder.max_length=77"])  # 77 CLIP-L tokens but 16 CLIP-G
    with pytest.raises(ValueError, match="pooled_encoder.max_length and pooled_encoder_2.max_length"):
        build_conditioner(cfg, build_teacher("sd3", "debug"))
    teacher = build_teacher("sd3", "debug")
    assert latent_shape(load_config(RECIPE), teacher) == (4, 8, 8)
    with pytest.raises(ValueError, match="at most patch_size × pos_embed_max_size = 32"):
        latent_shape(load_config(RECIPE, ["data.resolution=256"]), teacher)


def test_a_pipeline_folder_gives_both_clip_towers_and_the_wrong_class_is_refused(tmp_path):
    pipe = tmp_path / "sd3"
    for i, (sub, size) in enumerate((("", "debug"), ("_2", "debug_narrow"))):
        encoder, tokenizer = build_clip(size, seed=i, projection=True)
        encoder.save_pretrained(pipe / f"text_encoder{sub}")
        tokenizer.save_pretrained(pipe / f"tokenizer{sub}")
    folders = [f"pooled_encoder.path={pipe}", f"pooled_encoder_2.path={pipe}", "pooled_encoder.size=null"]
    cfg = load_config(RECIPE, [*folders, "pooled_encoder_2.size=null"])
    from_folder = build_conditioner(cfg, build_teacher("sd3", "debug"))({"captions": CAPTIONS})[0]
    from_sizes = build_conditioner(load_config(RECIPE), build_teacher("sd3", "debug"))({"captions": CAPTIONS})[0]
    assert torch.equal(from_folder.text, from_sizes.text) and torch.equal(from_folder.pooled, from_sizes.pooled)
    plain, tokenizer = build_clip("debug", projection=False)  # a FLUX-style CLIPTextModel: no projection
    plain.save_pretrained(pipe / "text_encoder")
    with pytest.raises(ValueError, match="holds a CLIPTextModel, but this family reads a CLIPTextModelWithProjection"):
        build_conditioner(cfg, build_teacher("sd3", "debug"))
