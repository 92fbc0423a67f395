"""The debug Qwen-Image recipe trained end to end on 2 ranks (real DeepSpeed ZeRO-3 on gloo, fp32): Qwen2.5-VL
encoding the captions as QwenImagePipeline (template, dropped head, padding mask), true CFG with the norm rescaling
and " " as the negative prompt, the dynamic shift, the lowest 2 dual-stream blocks under the history mask; loss
falls, resume is bit-identical, and the export samples as the checkpoint's student does."""

import json

import pytest
import torch
from recipe_runs import (
    assert_loss_falls_and_resume_is_bit_identical,
    assert_samples_as_the_checkpoint,
    checkpoint_student,
    export_of,
    straight_and_resumed,
)

from ard_scale.trainer.build import build_codec_for, build_conditioner

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
