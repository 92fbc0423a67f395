"""SD3 / SD3.5 on the family plug-in: the teacher equals StableDiffusion3Pipeline with true CFG and static shift 3.0
(invariant 5), also from prompts through the Conditioner's CLIP-L, CLIP-G and T5 (num_images_per_prompt=2, non-square
latents), the shared student invariants hold (they run for 'sd3' in test_student.py / test_discriminator.py
through model_helpers, on a debug transformer with dual attention, qk RMS-norm and a context_pre_only last block),
the KV cache holds both attentions' keys, real sizes build on meta, and bad input is a clear error."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from model_helpers import make_condition

from ard_scale.config import load_config
from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule
from ard_scale.diffusion.trajectory import diffusers_grid, draw_noise, teacher_trajectory
from ard_scale.models.families.sd3 import ARDSD3AttnProcessor
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher, load_teacher
from ard_scale.trainer.build import build_conditioner

SEEDS, STEPS, GUIDANCE, SHIFT = [3, 7, 11], 8, 4.5, 3.0
SHAPE = (4, 8, 8)  # debug SD3: 4 latent channels, 8×8 latent -> 16 image tokens of patch 2


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture
def sd3():
    t = build_teacher("sd3", "debug", seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # no zero-initialised gate or head: every block really acts
        for p in t.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return t


def test_debug_size_has_the_sd35_features_the_family_handles(sd3):
    blocks = sd3.model.transformer_blocks
    assert [b.attn2 is not None for b in blocks] == [True, True, False, False]  # dual attention tested
    assert [b.context_pre_only for b in blocks] == [False, False, False, True]
    assert blocks[0].attn.norm_q is not None and blocks[0].attn2.norm_k is not None  # qk RMS-norm
    student = ARDStudent(sd3, ARDConfig(num_steps=4, num_causal_layers=4), FlowSchedule(shift=SHIFT))
    for b in student.backbone.transformer_blocks:  # both attentions of every block below N are ours
        assert all(isinstance(a.processor, ARDSD3AttnProcessor) for a in (b.attn, b.attn2) if a is not None)


def _pipeline_latents(teacher, cond=None, null=None, *, shape=SHAPE, seeds=SEEDS, conditioner=None, **inputs):
    """StableDiffusion3Pipeline's final latents from `cond`'s and `null`'s embeddings or, given the Conditioner (the
    pipeline then holds its CLIP-L, CLIP-G and T5), from the prompts in `inputs`."""
    clip_l, clip_g, t5 = (conditioner.encoders[k] for k in ("clip", "clip_2", "t5")) if conditioner else (None,) * 3
    pipe = StableDiffusion3Pipeline(
        transformer=teacher.model, scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=None,
        text_encoder=getattr(clip_l, "model", None), tokenizer=getattr(clip_l, "tokenizer", None),
        text_encoder_2=getattr(clip_g, "model", None), tokenizer_2=getattr(clip_g, "tokenizer", None),
        text_encoder_3=getattr(t5, "model", None), tokenizer_3=getattr(t5, "tokenizer", None),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    if cond is not None:
        inputs.update(
            prompt_embeds=cond.text, pooled_prompt_embeds=cond.pooled,
            negative_prompt_embeds=null.text, negative_pooled_prompt_embeds=null.pooled,
        )  # fmt: skip
    return pipe(
        latents=draw_noise(seeds, shape),
        guidance_scale=GUIDANCE,
        num_inference_steps=STEPS,
        height=8 * shape[1],
        width=8 * shape[2],
        output_type="latent",
        **inputs,
    ).images


def _pipeline_default_grid(shift):
    """StableDiffusion3Pipeline's own N-step sigmas (linspace from 1 to the scheduler's already shifted σ_min, shifted
    again, then 0): they nest no coarser grid, so they are given to the trajectory explicitly (`diffusers_grid`)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(STEPS)
    return diffusers_grid(scheduler)[1]


def _ours(teacher, cond, null, guidance=GUIDANCE, shift=SHIFT, pipeline_default=False, shape=SHAPE, seeds=SEEDS):
    """The teacher trajectory, S=4 student steps: on the trainer's grid, K=2 Euler sub-steps per student step
    (FlowSchedule(shift).grid(8) = shift(k/8)), or on the pipeline's default grid, every other point the student's."""
    if pipeline_default:
        teacher_grid = _pipeline_default_grid(shift)
        grid = {"teacher_grid": teacher_grid, "student_grid": teacher_grid[::2]}
    else:
        grid = {"substeps": 2}
    return teacher_trajectory(
        teacher, FlowSchedule(shift=shift), cond, null_cond=null, guidance_scale=guidance, latent_shape=shape,
        seeds=seeds, num_student_steps=4, solver="euler", **grid,
    ).final  # fmt: skip


@pytest.mark.parametrize("pipeline_default", [False, True], ids=["trainer-grid", "pipeline-default-grid"])
def test_teacher_trajectory_equals_stable_diffusion_3_pipeline_latents(sd3, pipeline_default):
    """Invariant 5: same noise, steps, CFG scale and shift 3.0 -> the same latents (fp32, <= 1e-5). The trainer's
    grid is the pipeline's sampler given sigmas=linspace(1, 1/N, N) (its scheduler shifts them, as FluxPipeline's);
    the pipeline's default timesteps are reproduced too."""
    cond, null = make_condition("sd3", len(SEEDS), seed=0), make_condition("sd3", len(SEEDS), seed=1)
    sigmas = None if pipeline_default else np.linspace(1.0, 1 / STEPS, STEPS).tolist()
    ref = _pipeline_latents(sd3, cond, null, sigmas=sigmas)

    def ours(**kw):
        return _ours(sd3, **{"cond": cond, "null": null, "pipeline_default": pipeline_default, **kw})

    assert _rel(ours(), ref) <= 1e-5
    # the comparison can fail: another shift, another guidance scale or another null condition is another sampler
    assert _rel(ours(shift=SHIFT * 1.2), ref) > 1e-3
    assert _rel(ours(guidance=GUIDANCE * 0.8), ref) > 1e-3
    assert _rel(ours(null=make_condition("sd3", len(SEEDS), seed=2)), ref) > 1e-3
    assert not torch.allclose(_pipeline_default_grid(SHIFT), FlowSchedule(shift=SHIFT).grid(STEPS))  # two grids


def test_teacher_trajectory_from_captions_equals_stable_diffusion_3_pipeline_called_with_prompts(sd3):
    """Captions through our Conditioner (tiny CLIP-L, CLIP-G and T5; null = the encoded "") give the latents
    StableDiffusion3Pipeline gives for the same prompts with num_images_per_prompt=2 on non-square 8×12 latents (its
    positional table cropped to 4×6 patches): our batch is each caption repeated in place, one seed per image (fp32,
    the trainer's grid)."""
    overrides = ["pooled_encoder.max_length=77", "pooled_encoder_2.max_length=77"]  # the pipeline pads CLIP to 77
    cfg = load_config("recipes/tiny_sd3_cpu.yaml", overrides)
    conditioner = build_conditioner(cfg, sd3)
    captions, seeds, shape = ["a handwritten digit seven", "a zero"], [3, 7, 11, 13], (4, 8, 12)
    ref = _pipeline_latents(
        sd3, shape=shape, seeds=seeds, conditioner=conditioner, prompt=captions, num_images_per_prompt=2,
        sigmas=np.linspace(1.0, 1 / STEPS, STEPS).tolist(), max_sequence_length=cfg.text_encoder.max_length,
    )  # fmt: skip
    cond, null = conditioner({"captions": [captions[0], captions[0], captions[1], captions[1]]})
    torch.testing.assert_close(_ours(sd3, cond, null, shape=shape, seeds=seeds), ref, rtol=0, atol=1e-5)
    # the comparison can fail: the captions repeated as a whole batch pair other seeds with them
    swapped, _ = conditioner({"captions": captions * 2})
    assert _rel(_ours(sd3, swapped, null, shape=shape, seeds=seeds), ref) > 1e-3


def test_kv_cache_holds_each_groups_joint_and_image_only_keys(sd3):
    student = ARDStudent(sd3, ARDConfig(num_steps=4, num_causal_layers=2), FlowSchedule(shift=SHIFT)).eval()
    cond = make_condition("sd3", 2)
    seen = {}
    block = student.backbone.transformer_blocks[0]
    for name in ("attn", "attn2"):
        proc = getattr(block, name).processor
        attend = proc._attend

        def spy(q, k, v, attend=attend, key=proc.key):
            out = attend(q, k, v)
            seen.setdefault(key, []).append([t.shape[2] for t in student.attention_plan.caches[key][0]])
            return out

        proc._attend = spy
    student.sample(torch.randn(2, *SHAPE), cond)
    # joint attention: 16 image + 6 text tokens per group; image-only attention: 16; after step g, g+1 groups
    assert seen["0.attn"] == [[22] * (g + 1) for g in range(4)]
    assert seen["0.attn2"] == [[16] * (g + 1) for g in range(4)]
    assert set(student.attention_plan.caches) == set()  # dropped after sampling


def test_real_sd35_sizes_build_on_meta():
    """SD3.5-Medium (2.5B) and -Large (8.1B), counted as their checkpoints are: parameters + the positional table."""
    for size, billions, depth, dual in (("sd35_medium", 2.47, 24, 13), ("sd35_large", 8.15, 38, 0)):
        teacher = build_teacher("sd3", size, device="meta")
        stored = sum(t.numel() for t in teacher.model.state_dict().values())
        assert stored / 1e9 == pytest.approx(billions, abs=0.01), size
        blocks = teacher.model.transformer_blocks
        assert teacher.depth == depth and sum(b.attn2 is not None for b in blocks) == dual
        assert teacher.in_channels == 16 and teacher.patch_size == 2
        teacher.spec.check_latent_side(teacher.model, 128)  # 1024 px


def test_latent_side_is_bounded_by_the_cropped_positional_table(sd3):
    sd3.spec.check_latent_side(sd3.model, 32)  # patch 2 × pos_embed_max_size 16
    sd3.spec.check_latent_side(sd3.model, 6)
    with pytest.raises(ValueError, match="multiple of its patch size 2"):
        sd3.spec.check_latent_side(sd3.model, 7)
    with pytest.raises(ValueError, match=r"at most patch_size × pos_embed_max_size = 32"):
        sd3.spec.check_latent_side(sd3.model, 34)


def test_bad_input_names_the_cause_and_the_fix(sd3, tmp_path):
    cond = make_condition("sd3", 2)
    x, t = torch.randn(2, *SHAPE), torch.tensor([500.0, 500.0])
    with pytest.raises(ValueError, match="pooled CLIP-L ‖ CLIP-G"):
        sd3(x, t, Condition(text=cond.text))
    with pytest.raises(ValueError, match="text embeddings"):
        sd3(x, t, Condition(labels=torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="give no text_mask"):
        sd3(x, t, Condition(text=cond.text, pooled=cond.pooled, text_mask=torch.tensor([[1] * 5 + [0]] * 2)))
    sd3.model.save_pretrained(tmp_path / "pipe" / "transformer")
    with pytest.raises(ValueError, match=r"SD3Transformer2DModel \(family 'sd3'\).*teacher.family='flux'"):
        load_teacher(tmp_path / "pipe", family="flux")
    loaded = load_teacher(tmp_path / "pipe", family="sd3")
    assert torch.equal(loaded(x, t, cond), sd3(x, t, cond))
    # layouts the family's own attention cannot reproduce are refused, naming them
    other = build_teacher("sd3", "debug").model
    other.transformer_blocks[1].attn2.set_processor(AttnProcessor2_0())
    with pytest.raises(ValueError, match=r"transformer_blocks.1.attn2 runs AttnProcessor2_0"):
        type(sd3)(other)
    fused = build_teacher("sd3", "debug").model
    fused.fuse_qkv_projections()
    with pytest.raises(ValueError, match=r"transformer_blocks.0.attn runs FusedJointAttnProcessor2_0"):
        type(sd3)(fused)
