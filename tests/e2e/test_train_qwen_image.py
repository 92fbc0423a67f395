"""The debug Qwen-Image recipe trained end to end on 2 ranks (real DeepSpeed ZeRO-3 on gloo, fp32): Qwen2.5-VL
encoding the captions as QwenImagePipeline (template, dropped head, padding mask), true CFG with the norm rescaling
and " " as the negative prompt, the dynamic shift, the lowest 2 dual-stream blocks under the history mask; loss
falls, resume is bit-identical, and the export samples as the checkpoint's student does."""

import importlib.util
import json

import pytest
import torch
from recipe_runs import (
    REPLAY,
    assert_loss_falls_and_resume_is_bit_identical,
    assert_samples_as_the_checkpoint,
    checkpoint_student,
    export_of,
    losses,
    straight_and_resumed,
    train,
)

from ard_scale.trainer.build import build_codec_for, build_conditioner
from ard_scale.utils.launch import ROOT

RECIPE = "recipes/tiny_qwen_image_cpu.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return straight_and_resumed(RECIPE, tmp_path_factory.mktemp("qwen_image"))


pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_qwen_image_loss_falls_and_resume_is_bit_identical(runs):
    assert_loss_falls_and_resume_is_bit_identical(runs)


def test_qwen_image_export_samples_as_the_checkpoint_student(runs, tmp_path):
    exported, sampling = export_of(runs["full"], tmp_path / "export")
    assert sampling["latent_shape"] == [4, 8, 8] and sampling.get("guidance") is None  # CFG is distilled away
    checkpoint = checkpoint_student(RECIPE, runs["full"])
    cfg, teacher, _ = checkpoint
    cond, null = build_conditioner(cfg, teacher, for_eval=True)({"captions": ["a handwritten digit seven", "a one"]})
    assert cond.text.shape == (2, 16, 24) and cond.pooled is None and null is not None
    assert cond.text_mask.sum(1).tolist() != [16, 16]  # padded captions: the mask is live
    assert_samples_as_the_checkpoint(exported, checkpoint, cond)


def test_qwen_image_pipeline_from_a_prompt_equals_the_checkpoint_student(runs, tmp_path):
    """The exported pipeline folder carries Qwen2.5-VL and the Qwen-Image VAE, and a prompt samples as the checkpoint
    does (decoded through the exported AutoencoderKLQwenImage)."""
    from ard_scale.pipeline import ARDPipeline, export_pipeline

    folder = export_pipeline(runs["full"], tmp_path / "pipe", use_ema=False)
    index = json.loads((folder / "model_index.json").read_text())
    assert {"qwen_text_encoder", "vae", "scheduler"} <= index.keys() and "text_encoder" not in index
    assert index["qwen_text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    assert index["vae"] == ["diffusers", "AutoencoderKLQwenImage"]
    assert index["ard"]["guidance"] == "cfg" and index["ard"]["guidance_scale"] == 4.0
    pipe = ARDPipeline.from_pretrained(folder)
    cfg, teacher, reference = checkpoint_student(RECIPE, runs["full"])
    cond, _ = build_conditioner(cfg, teacher, for_eval=True)({"captions": ["a handwritten digit two"]})
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    out = pipe("a handwritten digit two", latents=noise, output_type="pt")
    torch.testing.assert_close(out.latents, reference.sample(noise, cond), rtol=1e-5, atol=1e-6)
    codec = build_codec_for(cfg, teacher)
    torch.testing.assert_close(out.images, ((codec.decode(out.latents) + 1) / 2).clamp(0, 1), rtol=0, atol=1e-6)


def test_qwen_image_trains_on_precomputed_text(tmp_path, capsys):
    """launchers/precompute_text.py --recipe stores Qwen2.5-VL's hidden states and mask in MDS shards, with the null
    caption's condition beside them, and a run with text_encoder.use_precomputed=true trains on them on 2 ranks
    without any Qwen2.5-VL (the recipe names none: loading one would fail)."""
    shards = tmp_path / "text"
    # its main() in this process (its command line: tests/unit/test_launcher_errors.py), not a fresh interpreter that
    # spent ~10 s importing torch and diffusers
    spec = importlib.util.spec_from_file_location("ard_precompute_text", ROOT / "launchers" / "precompute_text.py")
    precompute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(precompute)
    assert precompute.main(["bundled:digits/mds", str(shards), "--recipe", str(ROOT / RECIPE)]) == 1797
    assert "wrote 1797 samples with qwen_image's qwen embeddings" in capsys.readouterr().out
    run = tmp_path / "run"
    no_encoder = ("text_encoder.use_precomputed=true", "qwen_encoder.size=null")
    overrides = (*no_encoder, "data.format=mds", f"data.path={shards}", "train.max_steps=4")
    proc = train(RECIPE, run, *REPLAY, *overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    curve = losses(run)
    assert len(curve) == 4 and curve[-1] < curve[0], curve  # replay: the same batch 4 times

    # A pipeline encodes prompts: its export asks for the encoder the recipe did not need, and takes it as a setting.
    from ard_scale.pipeline import ARDPipeline, export_pipeline

    with pytest.raises(
        ValueError, match="names no qwen_encoder encoder .* e.g. python launchers/export.py .* qwen_enc"
    ):
        export_pipeline(run, tmp_path / "pipe", use_ema=False)
    assert not (tmp_path / "pipe").exists()
    broken_vae = ["qwen_encoder.size=debug", "vae.size=null", f"vae.path={tmp_path / 'nowhere'}"]
    with pytest.raises(ValueError, match="nowhere"):  # found after the student was written: nothing is left behind
        export_pipeline(run, tmp_path / "pipe", use_ema=False, overrides=broken_vae)
    assert not (tmp_path / "pipe").exists()
    with pytest.raises(ValueError, match="only the text_encoder, .* sections"):
        export_pipeline(run, tmp_path / "pipe", use_ema=False, overrides=["student.num_steps=2"])
    folder = export_pipeline(run, tmp_path / "pipe", use_ema=False, overrides=["qwen_encoder.size=debug"])
    pipe = ARDPipeline.from_pretrained(folder)
    assert (folder / "qwen_text_encoder").is_dir() and pipe.cfg.qwen_encoder.path == str(folder / "qwen_text_encoder")
    images = pipe(["a handwritten digit seven"], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (1, 3, 32, 32) and bool(torch.isfinite(images).all())
