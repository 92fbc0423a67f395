"""Text encoders as a diffusers pipeline is downloaded: `text_encoder_N/` holds the model and the sibling
`tokenizer_N/` its tokenizer (FLUX.1's T5 in _2, SD3's in _3). The recipe check, the loaders and the export take that
layout as it is, with no copying of tokenizer files into the encoder folder."""

import torch

from ard_scale.config import load_config
from ard_scale.config.paths import missing_paths
from ard_scale.models.text_encoder import build_clip, build_t5, encode_captions, load_clip, load_t5


def pipeline_with_t5(tmp_path, number: str):
    encoder, tokenizer = build_t5("debug")
    encoder.save_pretrained(tmp_path / "pipe" / f"text_encoder{number}")
    tokenizer.save_pretrained(tmp_path / "pipe" / f"tokenizer{number}")
    return encoder, tokenizer, tmp_path / "pipe" / f"text_encoder{number}"


def test_t5_in_a_pipelines_numbered_folder_loads_with_its_sibling_tokenizer(tmp_path):
    encoder, tokenizer, folder = pipeline_with_t5(tmp_path, "_3")
    loaded, loaded_tokenizer = load_t5(str(folder))
    captions = ["a handwritten digit seven", "a one"]
    ref, ref_mask = encode_captions(encoder, tokenizer, captions, max_length=12)
    out, mask = encode_captions(loaded, loaded_tokenizer, captions, max_length=12)
    assert torch.equal(out, ref) and torch.equal(mask, ref_mask)
    cfg = load_config("recipes/tiny_sd3_cpu.yaml", [f"text_encoder.path={folder}", "text_encoder.size=null"])
    assert missing_paths(cfg) == []


def test_a_clip_folder_given_directly_reads_its_sibling_tokenizer(tmp_path):
    model, tokenizer = build_clip("debug")
    model.save_pretrained(tmp_path / "pipe" / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "pipe" / "tokenizer")
    loaded, loaded_tokenizer = load_clip(str(tmp_path / "pipe" / "text_encoder"))
    assert loaded_tokenizer("a one")["input_ids"] == tokenizer("a one")["input_ids"]
    cfg = load_config(
        "recipes/tiny_flux_cpu.yaml",
        [f"pooled_encoder.path={tmp_path / 'pipe' / 'text_encoder'}", "pooled_encoder.size=null"],
    )
    assert missing_paths(cfg) == []


def test_export_links_a_self_contained_encoder_and_copies_one_whose_tokenizer_is_a_sibling(tmp_path):
    from ard_scale.pipeline import _save_or_link

    encoder, tokenizer, split = pipeline_with_t5(tmp_path, "_2")
    _save_or_link(encoder, tokenizer, str(split), tmp_path / "out_split", link=True)
    assert not (tmp_path / "out_split").is_symlink() and (tmp_path / "out_split" / "tokenizer_config.json").is_file()
    load_t5(str(tmp_path / "out_split"))
    whole = tmp_path / "whole"
    encoder.save_pretrained(whole)
    tokenizer.save_pretrained(whole)
    _save_or_link(encoder, tokenizer, str(whole), tmp_path / "out_whole", link=True)
    assert (tmp_path / "out_whole").is_symlink() and (tmp_path / "out_whole").resolve() == whole.resolve()


def test_one_pipeline_folder_serves_every_encoder_from_the_familys_own_subfolder(tmp_path):
    """SD3's pipeline keeps CLIP-L in text_encoder/, CLIP-G in text_encoder_2/ and T5 in text_encoder_3/: each
    encoder's recipe path may be the pipeline folder itself, and each slot reads its own subfolder (a loader that
    took text_encoder/ for T5 would load CLIP-L's folder)."""
    from ard_scale.models.families import get_family
    from ard_scale.trainer.conditioning import load_text_encoders

    t5, t5_tokenizer, _ = pipeline_with_t5(tmp_path, "_3")
    pipe = tmp_path / "pipe"
    clips = {}
    for number, seed in (("", 0), ("_2", 1)):
        clips[number] = build_clip("debug", seed=seed, projection=True)
        clips[number][0].save_pretrained(pipe / f"text_encoder{number}")
        clips[number][1].save_pretrained(pipe / f"tokenizer{number}")
    sections = ("text_encoder", "pooled_encoder", "pooled_encoder_2")
    cfg = load_config(
        "recipes/tiny_sd3_cpu.yaml", [o for s in sections for o in (f"{s}.path={pipe}", f"{s}.size=null")]
    )
    assert missing_paths(cfg) == []
    encoders = load_text_encoders(
        get_family("sd3"),
        {"t5": cfg.text_encoder, "clip": cfg.pooled_encoder, "clip_2": cfg.pooled_encoder_2},
        dtype=torch.float32,
    )
    for slot, (model, _) in (("t5", (t5, t5_tokenizer)), ("clip", clips[""]), ("clip_2", clips["_2"])):
        loaded = encoders[slot].model.state_dict()
        assert loaded.keys() == model.state_dict().keys(), slot
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items()), slot
    (pipe / "text_encoder_3" / "config.json").unlink()  # FLUX.1's T5 folder (_2) is not SD3's
    [problem] = missing_paths(cfg)
    assert problem.startswith(
        f"text_encoder.path: T5 folder '{pipe}' lacks model or tokenizer files ['config.json', "
        "'tokenizer_config.json'] (nor text_encoder_3/config.json, where this family's pipeline keeps T5)"
    )
