"""The debug SD3.5 recipe trained end to end on 2 ranks (real DeepSpeed ZeRO-3 on gloo, fp32): T5 and both CLIP
towers encoding the captions as StableDiffusion3Pipeline, true CFG with the empty prompt, static shift 3.0, the
dual-attention blocks under the history mask; loss falls, resume is bit-identical, and the export samples as the
checkpoint's student does."""

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

from ard_scale.trainer.build import build_conditioner

RECIPE = "recipes/tiny_sd3_cpu.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return straight_and_resumed(RECIPE, tmp_path_factory.mktemp("sd3"))


pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_sd3_loss_falls_and_resume_is_bit_identical(runs):
    assert_loss_falls_and_resume_is_bit_identical(runs)


def test_sd3_export_samples_as_the_checkpoint_student(runs, tmp_path):
    exported, sampling = export_of(runs["full"], tmp_path / "export")
    assert sampling["latent_shape"] == [4, 8, 8] and sampling.get("guidance") is None  # CFG is distilled away
    checkpoint = checkpoint_student(RECIPE, runs["full"])
    cfg, teacher, _ = checkpoint
    cond, null = build_conditioner(cfg, teacher, for_eval=True)({"captions": ["a handwritten digit seven", "a one"]})
    assert cond.text.shape == (2, 16 + 8, 24) and cond.pooled.shape == (2, 24) and null is not None
    assert_samples_as_the_checkpoint(exported, checkpoint, cond)


def test_sd3_pipeline_from_a_prompt_equals_the_checkpoint_student(runs, tmp_path):
    """The exported pipeline folder carries both CLIP towers and T5, and a prompt samples as the checkpoint does."""
    from ard_scale.pipeline import ARDPipeline, export_pipeline

    folder = export_pipeline(runs["full"], tmp_path / "pipe", use_ema=False)
    index = json.loads((folder / "model_index.json").read_text())
    assert {"text_encoder", "pooled_text_encoder", "pooled_text_encoder_2", "vae", "scheduler"} <= index.keys()
    assert index["pooled_text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["ard"]["guidance"] == "cfg" and index["ard"]["guidance_scale"] == 4.5
    pipe = ARDPipeline.from_pretrained(folder)
    cfg, teacher, reference = checkpoint_student(RECIPE, runs["full"])
    cond, _ = build_conditioner(cfg, teacher, for_eval=True)({"captions": ["a handwritten digit two"]})
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    out = pipe("a handwritten digit two", latents=noise, output_type="pt")
    torch.testing.assert_close(out.latents, reference.sample(noise, cond), rtol=1e-5, atol=1e-6)
