"""Conditions for the teacher's family: labels, captions through T5, precomputed embeddings, the null caption."""

import shutil

import pytest
import torch

from ard_scale.config import load_config
from ard_scale.data.bundled import resolve_data_path
from ard_scale.models.teachers import build_teacher
from ard_scale.models.text_encoder import encode_captions
from ard_scale.trainer.build import build_conditioner

PIXART = ["teacher.family=pixart", "teacher.num_classes=null", "text_encoder.size=debug", "text_encoder.max_length=8"]


def test_captions_are_encoded_and_the_null_caption_is_the_encoded_empty_string():
    cfg = load_config("recipes/tiny_cpu.yaml", PIXART)
    conditioner = build_conditioner(cfg, build_teacher("pixart", "debug"))
    captions = ["a seven", "a handwritten zero, slanted"]
    cond, null = conditioner({"captions": captions})
    t5 = conditioner.encoders["t5"]
    text, mask = encode_captions(t5.model, t5.tokenizer, captions, max_length=8)
    empty, empty_mask = encode_captions(t5.model, t5.tokenizer, ["", ""], max_length=8)
    torch.testing.assert_close(cond.text, text)
    assert torch.equal(cond.text_mask, mask)
    torch.testing.assert_close(null.text, empty)  # encoded once, expanded per batch: the same numbers
    assert torch.equal(null.text_mask, empty_mask)
    assert not torch.allclose(cond.text, null.text)


def test_precomputed_embeddings_load_the_encoder_only_for_the_null_caption():
    cfg = load_config("recipes/tiny_cpu.yaml", [*PIXART, "text_encoder.use_precomputed=true"])
    conditioner = build_conditioner(cfg, build_teacher("pixart", "debug"))
    assert not conditioner.encoders and conditioner.null is not None  # dropped after the empty caption
    batch = {"t5_emb": torch.randn(2, 8, 24), "t5_mask": torch.ones(2, 8, dtype=torch.long), "captions": ["", ""]}
    cond, null = conditioner(batch)
    assert torch.equal(cond.text, batch["t5_emb"])
    assert null.text.shape == (2, 8, 24)
    with pytest.raises(ValueError, match="carries no t5_emb"):
        conditioner({"captions": ["a one"]})
    # evaluation encodes prompts: then the encoder stays
    assert build_conditioner(cfg, build_teacher("pixart", "debug"), for_eval=True).encoders["t5"].model is not None


def test_the_text_source_is_the_runs_choice_not_each_batchs():
    """Under ZeRO-3 encoding is collective: were each batch to choose between its stored embeddings and its
    captions, ranks reading shards of both kinds would hang. use_precomputed=true refuses a batch without the
    embeddings even where the encoder is loaded (in-loop evaluation keeps it); use_precomputed=false encodes the
    captions even where the shards also carry embeddings."""
    stored = {"t5_emb": torch.randn(2, 8, 24), "t5_mask": torch.ones(2, 8, dtype=torch.long),
              "captions": ["a seven", "a one"], "keys": ["000007", "000001"]}  # fmt: skip
    precomputed = load_config("recipes/tiny_cpu.yaml", [*PIXART, "text_encoder.use_precomputed=true"])
    conditioner = build_conditioner(precomputed, build_teacher("pixart", "debug"), for_eval=True)
    assert conditioner.can_encode
    assert torch.equal(conditioner(stored)[0].text, stored["t5_emb"])
    with pytest.raises(ValueError, match=r"samples 000007, 000001 carries no t5_emb \(every shard must be"):
        conditioner({"captions": stored["captions"], "keys": stored["keys"]})
    prompts = conditioner.encode(["a seven"])  # evaluation's prompts are no shard batch
    assert prompts.text.shape == (1, 8, 24)

    captions = build_conditioner(load_config("recipes/tiny_cpu.yaml", PIXART), build_teacher("pixart", "debug"))
    cond = captions(stored)[0]
    t5 = captions.encoders["t5"]
    text, _ = encode_captions(t5.model, t5.tokenizer, stored["captions"], max_length=8)
    torch.testing.assert_close(cond.text, text)
    with pytest.raises(ValueError, match="carries no captions to encode"):
        captions({"t5_emb": stored["t5_emb"], "t5_mask": stored["t5_mask"]})


def test_moving_a_conditioner_moves_its_encoders_without_reading_them_again():
    """ARDPipeline.to(device) moves its conditioner: the loaded encoders themselves (a T5-XXL is read once)."""
    conditioner = build_conditioner(load_config("recipes/tiny_cpu.yaml", PIXART), build_teacher("pixart", "debug"))
    model = conditioner.encoders["t5"].model
    assert conditioner.to("meta") is conditioner and conditioner.device == torch.device("meta")
    assert conditioner.encoders["t5"].model is model and {p.device.type for p in model.parameters()} == {"meta"}
    assert conditioner.null.text.device.type == "meta"


def test_precomputed_embeddings_with_guidance_and_no_encoder_need_the_shards_null_condition(tmp_path):
    """Shards precomputed without the null caption's condition (an older precompute_text.py) cannot serve CFG
    without the encoder; with it they can (tests/unit/data/test_data_tools.py writes and reads it)."""
    from ard_scale.config.paths import missing_paths
    from ard_scale.data.text_encoding import NULL_FILE

    shards = tmp_path / "text"
    shutil.copytree(resolve_data_path("bundled:digits/mds"), shards)  # MDS shards (their columns do not matter)
    overrides = ["teacher.family=pixart", "teacher.num_classes=null", "text_encoder.use_precomputed=true",
                 "data.format=mds", f"data.path={shards}"]  # fmt: skip
    [problem] = missing_paths(load_config("recipes/tiny_cpu.yaml", overrides))
    assert problem.startswith("text_encoder.path: guidance needs the null caption's condition, which the shards")
    assert missing_paths(load_config("recipes/tiny_cpu.yaml", [*overrides, "diffusion.guidance_scale=1"])) == []
    (shards / NULL_FILE).write_bytes(b"")  # present: what it holds is the trainer's to read
    assert missing_paths(load_config("recipes/tiny_cpu.yaml", overrides)) == []


def test_pixart_captions_are_encoded_as_pixart_sigma_pipeline_encodes_its_prompt():
    """PixArtSigmaPipeline lower-cases and strips every prompt (and the negative prompt) before T5 tokenizes it, so
    a caption with capitals or surrounding spaces must give the pipeline's embedding, not that of the raw string."""
    from diffusers import PixArtSigmaPipeline

    cfg = load_config("recipes/tiny_cpu.yaml", PIXART)
    conditioner = build_conditioner(cfg, build_teacher("pixart", "debug"))
    t5 = conditioner.encoders["t5"]
    pipe = PixArtSigmaPipeline(
        tokenizer=t5.tokenizer, text_encoder=t5.model, vae=None, transformer=None, scheduler=None
    )
    captions = ["A Red Circle", "  a seven "]
    cond, null = conditioner({"captions": captions})
    text, mask, neg, neg_mask = pipe.encode_prompt(
        captions, do_classifier_free_guidance=True, negative_prompt="", device="cpu", max_sequence_length=8
    )
    assert torch.equal(cond.text, text) and torch.equal(cond.text_mask, mask)
    assert torch.equal(null.text, neg) and torch.equal(null.text_mask, neg_mask)
    raw, _ = encode_captions(t5.model, t5.tokenizer, captions, max_length=8)
    assert not torch.allclose(raw, text)  # the comparison can fail: the raw captions encode otherwise


def test_auto_text_source_reads_a_batchs_stored_embeddings_and_encodes_the_captions_of_one_without():
    """text_source='auto' (launchers/fit_teacher.py, one process): the stored embeddings where the batch has them,
    even with the encoder loaded, else the captions through the encoder."""
    from ard_scale.trainer.conditioning import SLOTS, Conditioner

    cfg = load_config("recipes/tiny_cpu.yaml", PIXART)
    sections = {slot: getattr(cfg, section) for slot, (section, _, _) in SLOTS.items()}
    conditioner = Conditioner(build_teacher("pixart", "debug"), sections, guidance_scale=4.5, text_source="auto")
    assert conditioner.can_encode
    captions = ["a seven", "a one"]
    stored = {"t5_emb": torch.randn(2, 8, 24), "t5_mask": torch.ones(2, 8, dtype=torch.long), "captions": captions}
    assert torch.equal(conditioner(stored)[0].text, stored["t5_emb"])
    t5 = conditioner.encoders["t5"]
    text, _ = encode_captions(t5.model, t5.tokenizer, captions, max_length=8)
    torch.testing.assert_close(conditioner({"captions": captions})[0].text, text)


def test_the_null_condition_of_a_batch_is_zero_padded_and_masked_out_past_its_own_tokens():
    """Precomputed shards may hold more tokens than the encoder gives the null caption: its text is padded with zeros
    that its mask hides (attending to them would change the unconditional prediction), or cut to fewer."""
    from ard_scale.diffusion.condition import Condition
    from ard_scale.trainer.conditioning import batch_null

    null = Condition(text=torch.randn(1, 3, 4), text_mask=torch.tensor([[1, 1, 0]]), pooled=torch.randn(1, 5))
    longer = batch_null(null, 2, 5)
    assert longer.text.shape == (2, 5, 4) and torch.equal(longer.text[:, :3], null.text.expand(2, -1, -1))
    assert not longer.text[:, 3:].any()
    assert torch.equal(longer.text_mask, torch.tensor([[1, 1, 0, 0, 0]] * 2))
    assert torch.equal(longer.pooled, null.pooled.expand(2, -1))
    shorter = batch_null(null, 2, 2)
    assert torch.equal(shorter.text, null.text[:, :2].expand(2, -1, -1))
    assert torch.equal(shorter.text_mask, torch.tensor([[1, 1]] * 2))
