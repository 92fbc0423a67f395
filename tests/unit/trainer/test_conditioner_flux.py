"""FLUX.1's conditions from captions: T5 tokens without a mask and CLIP's pooled embedding exactly as FluxPipeline
encodes a prompt, the distilled guidance value instead of a null condition, and the recipe errors for missing
encoders, offline dumps and an unpackable resolution."""

import json

import pytest
import torch
from diffusers import FluxPipeline

from ard_scale.config import ConfigError, load_config
from ard_scale.models.teachers import build_teacher
from ard_scale.trainer.build import build_conditioner, latent_shape

RECIPE = "recipes/tiny_flux_cpu.yaml"
CAPTIONS = ["a handwritten digit seven", "a zero"]


def test_captions_are_encoded_as_flux_pipeline_encodes_its_prompt():
    cfg = load_config(RECIPE, ["pooled_encoder.max_length=77"])  # FluxPipeline pads CLIP to the tokenizer's 77
    teacher = build_teacher("flux", "debug")
    conditioner = build_conditioner(cfg, teacher)
    cond, null = conditioner({"captions": CAPTIONS})
    pipe = FluxPipeline(
        scheduler=None, vae=None, transformer=None,
        text_encoder=conditioner.encoders["clip"].model, tokenizer=conditioner.encoders["clip"].tokenizer,
        text_encoder_2=conditioner.encoders["t5"].model, tokenizer_2=conditioner.encoders["t5"].tokenizer,
    )  # fmt: skip
    text, pooled, _ = pipe.encode_prompt(CAPTIONS, None, device="cpu", max_sequence_length=cfg.text_encoder.max_length)
    assert torch.equal(cond.text, text) and torch.equal(cond.pooled, pooled)
    assert cond.text_mask is None  # FLUX attends to every token, padding included
    assert null is None and conditioner.cfg_scale == 1  # no CFG pass: the guidance is embedded
    assert cond.guidance.tolist() == [3.5, 3.5]
    other, _ = conditioner({"captions": ["a one", "a two"]})
    assert not torch.allclose(other.pooled, cond.pooled)


def test_a_t5_in_the_runs_precision_encodes_as_a_bf16_flux_pipeline(tmp_path):
    """text_encoder.precision 'run' in a bf16 run: T5 loaded in bf16 from its folder as FluxPipeline.from_pretrained(
    torch_dtype=bfloat16) loads it, giving that pipeline's prompt embeddings bit for bit; the default keeps it fp32."""
    from transformers import T5EncoderModel

    from ard_scale.models.text_encoder import build_t5

    model, tokenizer = build_t5("debug")
    model.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    t5 = ["text_encoder.size=null", f"text_encoder.path={tmp_path / 't5'}", "pooled_encoder.max_length=77"]
    teacher = build_teacher("flux", "debug")
    conditioners = {
        precision: build_conditioner(
            load_config(RECIPE, [*t5, "train.precision=bf16", f"text_encoder.precision={precision}"]), teacher
        )
        for precision in ("fp32", "run")
    }
    encoder = conditioners["run"].encoders["t5"].model
    assert {p.dtype for p in encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in conditioners["fp32"].encoders["t5"].model.parameters()} == {torch.float32}
    clip = conditioners["run"].encoders["clip"]
    pipe = FluxPipeline(
        scheduler=None, vae=None, transformer=None, text_encoder=clip.model, tokenizer=clip.tokenizer,
        text_encoder_2=T5EncoderModel.from_pretrained(tmp_path / "t5", torch_dtype=torch.bfloat16),
        tokenizer_2=conditioners["run"].encoders["t5"].tokenizer,
    )  # fmt: skip
    text, _, _ = pipe.encode_prompt(CAPTIONS, None, device="cpu", max_sequence_length=8)
    cond, _ = conditioners["run"]({"captions": CAPTIONS})
    assert text.dtype == torch.bfloat16 and torch.equal(cond.text, text)
    in_fp32, _ = conditioners["fp32"]({"captions": CAPTIONS})
    assert in_fp32.text.dtype == torch.float32 and not torch.equal(in_fp32.text.to(torch.bfloat16), text)


def test_precomputed_shards_need_the_pooled_embedding_too():
    cfg = load_config(RECIPE, ["text_encoder.use_precomputed=true", "text_encoder.size=null"])
    conditioner = build_conditioner(cfg, build_teacher("flux", "debug"))
    assert not conditioner.encoders  # guidance is embedded: no empty caption to encode
    emb = {"t5_emb": torch.randn(2, 8, 24), "t5_mask": torch.ones(2, 8, dtype=torch.long)}
    cond, _ = conditioner({**emb, "pooled_emb": torch.randn(2, 16)})
    assert torch.equal(cond.text, emb["t5_emb"]) and cond.text_mask is None and cond.pooled.shape == (2, 16)
    with pytest.raises(ValueError, match="no t5_emb and pooled_emb.*precompute_text.py SHARDS OUT --recipe RECIPE"):
        conditioner(emb)


def test_a_flux_recipe_without_its_clip_encoder_or_with_offline_dumps_is_a_config_error():
    with pytest.raises(ConfigError, match="pooled_encoder.path: family 'flux' reads CLIP's pooled text embedding"):
        load_config(RECIPE, ["pooled_encoder.size=null"])
    load_config(
        RECIPE, ["train.trajectory_source=offline", "data.trajectory_path=/nowhere"]
    )  # offline dumps store the text precompute_text.py writes for every family
    load_config(RECIPE, ["pooled_encoder.size=null", "text_encoder.use_precomputed=true"])  # shards carry it


def test_the_latent_side_follows_the_resolution_and_must_pack(tmp_path):
    teacher = build_teacher("flux", "debug")
    assert latent_shape(load_config(RECIPE, ["data.resolution=64"]), teacher) == (4, 16, 16)
    # an 8× VAE (FLUX.1's) at 1000 px: 125×125 latents; only the VAE's config is read
    (tmp_path / "config.json").write_text(json.dumps({"block_out_channels": [8, 16, 16, 16]}))
    vae8 = ["vae.size=null", f"vae.path={tmp_path}"]
    assert latent_shape(load_config(RECIPE, [*vae8, "data.resolution=1024"]), teacher) == (4, 128, 128)
    with pytest.raises(ValueError, match="125×125 latents, which FLUX cannot pack into 2×2 patches"):
        latent_shape(load_config(RECIPE, [*vae8, "data.resolution=1000"]), teacher)
    dit = build_teacher("dit", "debug")  # a fixed positional embedding: its own 8×8 only
    assert latent_shape(load_config("recipes/tiny_cpu.yaml"), dit) == (4, 8, 8)
    with pytest.raises(ValueError, match="takes 8×8 .*set data.resolution"):
        latent_shape(load_config("recipes/tiny_cpu.yaml", ["data.resolution=64"]), dit)


def test_offline_trajectories_complete_a_stored_condition_as_the_conditioner_does():
    """A dump stores FLUX.1's T5 tokens and pooled CLIP embedding; the offline source adds what the Conditioner adds
    to precomputed text: the embedded guidance, and no mask (FLUX attends to every token)."""
    from ard_scale.trainer.trajectories import build_trajectory_source

    cfg = load_config(RECIPE, ["text_encoder.use_precomputed=true"])
    conditioner = build_conditioner(cfg, build_teacher("flux", "debug"))
    source = build_trajectory_source("offline", None, None, conditioner)
    batch = {"states": torch.randn(2, 5, 4, 8, 8), "t5_emb": torch.randn(2, 8, 24),
             "t5_mask": torch.ones(2, 8, dtype=torch.long), "pooled_emb": torch.randn(2, 16)}  # fmt: skip
    states, cond = source(batch, step=1)
    stored, _ = conditioner({k: v for k, v in batch.items() if k != "states"})  # the precomputed-text path
    assert torch.equal(states, batch["states"]) and torch.equal(cond.text, stored.text)
    assert torch.equal(cond.pooled, stored.pooled) and cond.text_mask is None and stored.text_mask is None
    assert cond.guidance.tolist() == stored.guidance.tolist() == [3.5, 3.5]
