"""The debug Qwen-Image recipe trained end to end on 2 ranks (real DeepSpeed ZeRO-3 on gloo, fp32): Qwen2.5-VL
encoding the captions as QwenImagePipeline (template, dropped head, padding mask), true CFG with the norm rescaling
and " " as the negative prompt, the dynamic shift, the lowest 2 dual-stream blocks under the history mask; loss
falls, resume is bit-identical, and the export samples as the checkpoint's student does."""

import json

import pytest
import torch
from recipe_runs import REPLAY, losses, straight_and_resumed

from ard_scale.checkpoint.export import export_student, load_exported_student, sample_noise, student_state_dict
from ard_scale.config import load_config
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import (
    build_codec_for,
    build_conditioner,
    build_schedule,
    build_teacher_model,
    latent_shape,
)

RECIPE = "recipes/tiny_qwen_image_cpu.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return straight_and_resumed(RECIPE, tmp_path_factory.mktemp("qwen_image"))


pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_qwen_image_loss_falls_and_resume_is_bit_identical(runs):
    full, split = losses(runs["full"]), losses(runs["split"])
    assert len(full) == 4 and split == full  # bit-identical through the resume at step 2, replay cache included
    assert full[-1] < 0.8 * full[0], full  # the same trajectories four times: the optimiser must reduce the loss


def test_qwen_image_export_samples_as_the_checkpoint_student(runs, tmp_path):
    cfg = load_config(RECIPE, [f"checkpoint.run_dir={runs['full']}", *REPLAY])
    out = export_student(runs["full"], tmp_path / "export", use_ema=False)
    sampling = json.loads((out / "ard_config.json").read_text())["sampling"]
    assert sampling["latent_shape"] == [4, 8, 8] and sampling.get("guidance") is None  # CFG is distilled away
    exported = load_exported_student(out)

    teacher = build_teacher_model(cfg)
    reference = ARDStudent(
        teacher, cfg.student, build_schedule(cfg, teacher.patch_size), latent_shape=latent_shape(cfg, teacher)
    ).eval()
    state, *_ = student_state_dict(runs["full"], use_ema=False)
    reference.load_state_dict(state, strict=True)

    cond, null = build_conditioner(cfg, teacher, for_eval=True)({"captions": ["a handwritten digit seven", "a one"]})
    assert cond.text.shape == (2, 16, 24) and cond.pooled is None and null is not None
    assert cond.text_mask.sum(1).tolist() != [16, 16]  # padded captions: the mask is live
    noise = sample_noise(exported, 2, seed=3)
    assert noise.shape == (2, 4, 8, 8)
    x = exported.sample(noise, cond)
    torch.testing.assert_close(x, reference.sample(noise, cond), rtol=1e-5, atol=1e-6)
    # trained: the student no longer samples as its initialisation (the teacher's weights) does
    init = ARDStudent(teacher, cfg.student, build_schedule(cfg, teacher.patch_size)).eval()
    assert (init.sample(noise, cond) - x).abs().max() > 1e-4


def test_qwen_image_pipeline_from_a_prompt_equals_the_checkpoint_student(runs, tmp_path):
    """The exported pipeline folder carries Qwen2.5-VL and the Qwen-Image VAE, and a prompt samples as the checkpoint
    does (decoded through the exported AutoencoderKLQwenImage)."""
    from ard_scale.pipeline import ARDPipeline, export_pipeline

    cfg = load_config(RECIPE, [f"checkpoint.run_dir={runs['full']}", *REPLAY])
    folder = export_pipeline(runs["full"], tmp_path / "pipe", use_ema=False)
    index = json.loads((folder / "model_index.json").read_text())
    assert {"qwen_text_encoder", "vae", "scheduler"} <= index.keys() and "text_encoder" not in index
    assert index["qwen_text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    assert index["vae"] == ["diffusers", "AutoencoderKLQwenImage"]
    assert index["ard"]["guidance"] == "cfg" and index["ard"]["guidance_scale"] == 4.0
    pipe = ARDPipeline.from_pretrained(folder)

    teacher = build_teacher_model(cfg)
    reference = ARDStudent(teacher, cfg.student, build_schedule(cfg, teacher.patch_size)).eval()
    reference.load_state_dict(student_state_dict(runs["full"], use_ema=False)[0], strict=True)
    cond, _ = build_conditioner(cfg, teacher, for_eval=True)({"captions": ["a handwritten digit two"]})
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    out = pipe("a handwritten digit two", latents=noise, output_type="pt")
    torch.testing.assert_close(out.latents, reference.sample(noise, cond), rtol=1e-5, atol=1e-6)
    codec = build_codec_for(cfg, teacher)
    torch.testing.assert_close(out.images, ((codec.decode(out.latents) + 1) / 2).clamp(0, 1), rtol=0, atol=1e-6)
