"""Qwen-Image on the family plug-in: the teacher equals QwenImagePipeline with true CFG (its norm rescaling) and the
dynamic shift (invariant 5), on the trainer's grid and on the real scheduler's own (shift_terminal) grid, and from
prompts through the Conditioner's Qwen2.5-VL (captions of different and equal lengths, non-square latents); the VAE
codec is the pipelines' latent normalisation both ways; the shared student invariants hold (they run for
'qwen_image' in test_student.py / test_discriminator.py through model_helpers, with a padded caption whose mask must
be honoured); the KV cache holds text and image keys; the real size builds on meta; bad input is a clear error."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from model_helpers import make_condition

from ard_scale.config import load_config
from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule, dynamic_shift
from ard_scale.diffusion.trajectory import diffusers_grid, draw_noise, teacher_trajectory
from ard_scale.models.families.flux import pack, unpack
from ard_scale.models.families.qwen_image import ARDQwenAttnProcessor
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher, load_teacher
from ard_scale.models.vae import SIZES as VAE_SIZES
from ard_scale.models.vae import build_codec
from ard_scale.trainer.build import build_conditioner

SEEDS, STEPS, CFG = [3, 7, 11], 8, 4.0
SHAPE = (4, 8, 8)  # debug Qwen-Image: 4 latent channels, 8×8 latent -> 16 packed image tokens
# Qwen/Qwen-Image scheduler/scheduler_config.json (its dynamic shift: mu from 0.5 at 256 to 0.9 at 8192 tokens)
QWEN_SCHEDULER = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0, shift_terminal=0.02,
    time_shift_type="exponential", use_dynamic_shifting=True,
)  # fmt: skip


def _shift(image_tokens):
    return dynamic_shift(image_tokens, base_seq_len=256, max_seq_len=8192, base_shift=0.5, max_shift=0.9)


SHIFT = _shift(16)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture
def qwen():
    t = build_teacher("qwen_image", "debug", seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # no zero-initialised gate or head: every block really acts
        for p in t.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return t


def _conditions():
    cond, null = make_condition("qwen_image", len(SEEDS), seed=0), make_condition("qwen_image", len(SEEDS), seed=1)
    null.text_mask[:, 3:] = 0  # a shorter null caption, as " " is
    return cond, null


def _pipeline_latents(teacher, scheduler_kwargs, *, shape=SHAPE, encoder=None, **inputs):
    """QwenImagePipeline's final latents, unpacked to (B, C, H, W); given the Conditioner's Qwen2.5-VL `encoder`, the
    pipeline takes prompts."""
    pipe = QwenImagePipeline(
        transformer=teacher.model, scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_kwargs), vae=None,
        text_encoder=getattr(encoder, "model", None), tokenizer=getattr(encoder, "tokenizer", None),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    packed = pipe(
        true_cfg_scale=CFG,
        latents=pack(draw_noise(SEEDS, shape)),
        num_inference_steps=STEPS,
        height=8 * shape[1],
        width=8 * shape[2],
        output_type="latent",
        **inputs,
    ).images
    return unpack(packed, *shape[1:])


def _embeds(cond, null):
    return dict(
        prompt_embeds=cond.text, prompt_embeds_mask=cond.text_mask,
        negative_prompt_embeds=null.text, negative_prompt_embeds_mask=null.text_mask,
    )  # fmt: skip


def _ours(teacher, cond, null, *, shift=SHIFT, cfg=CFG, guide=True, grid=None, shape=SHAPE):
    """The teacher trajectory, S=4: on the trainer's grid (K=2 Euler sub-steps, FlowSchedule(shift).grid(8)) or on an
    explicit teacher grid whose every other point is a student time."""
    grids = {"substeps": 2} if grid is None else {"teacher_grid": grid, "student_grid": grid[::2]}
    return teacher_trajectory(
        teacher, FlowSchedule(shift=shift), cond, null_cond=null, guidance_scale=cfg, latent_shape=shape, seeds=SEEDS,
        num_student_steps=4, solver="euler", guide=teacher.spec.guide if guide else None, **grids,
    ).final  # fmt: skip


def test_teacher_trajectory_equals_qwen_image_pipeline_latents_on_the_trainer_grid(qwen):
    """Invariant 5: same noise, steps, true_cfg_scale and dynamic shift -> the same latents (fp32, <= 1e-5), with the
    text masks honoured. The trainer's grid is QwenImagePipeline's own (sigmas = linspace(1, 1/N, N), shifted by the
    scheduler's mu for 16 image tokens) with the scheduler's final stretch to shift_terminal left off."""
    cond, null = _conditions()
    ref = _pipeline_latents(qwen, {**QWEN_SCHEDULER, "shift_terminal": None}, **_embeds(cond, null))
    assert _rel(_ours(qwen, cond, null), ref) <= 1e-5
    # the comparison can fail: another shift, scale, null, mask, or CFG without the norm rescaling is another sampler
    assert _rel(_ours(qwen, cond, null, shift=SHIFT * 1.2), ref) > 1e-3
    assert _rel(_ours(qwen, cond, null, cfg=CFG * 0.8), ref) > 1e-3
    assert _rel(_ours(qwen, cond, null, guide=False), ref) > 1e-3
    assert _rel(_ours(qwen, cond, make_condition("qwen_image", len(SEEDS), seed=2)), ref) > 1e-3
    unmasked = Condition(text=cond.text)  # the padded tokens would be attended to
    assert _rel(_ours(qwen, unmasked, null), ref) > 1e-3


def test_teacher_trajectory_equals_the_pipeline_default_with_the_real_scheduler(qwen):
    """Qwen-Image's scheduler stretches its sigmas to end at shift_terminal 0.02: that N-step grid nests no coarser
    one, so it is given to the trajectory explicitly (`diffusers_grid`), and the pipeline's default call is matched."""
    cond, null = _conditions()
    ref = _pipeline_latents(qwen, QWEN_SCHEDULER, **_embeds(cond, null))
    scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER)
    mu = float(np.log(SHIFT))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)
    grid = diffusers_grid(scheduler)[1]
    assert float(grid[-2]) == pytest.approx(0.02) and not torch.allclose(grid, FlowSchedule(shift=SHIFT).grid(STEPS))
    assert _rel(_ours(qwen, cond, null, grid=grid), ref) <= 1e-5
    assert _rel(_ours(qwen, cond, null), ref) > 1e-3  # the trainer's grid is another sampler


CAPTIONS = ["a handwritten digit seven", "a zero", "a red circle"]
EQUAL_LENGTHS = ["a four", "a nine", "a five"]  # 6 tokens each: the pipeline passes no mask


@pytest.mark.parametrize(
    "captions, shape",
    [
        pytest.param(CAPTIONS, SHAPE, id="different-lengths"),
        pytest.param(CAPTIONS, (4, 8, 12), id="non-square"),
        pytest.param(EQUAL_LENGTHS, SHAPE, id="equal-lengths"),
    ],
)
def test_teacher_trajectory_from_captions_equals_qwen_image_pipeline_called_with_prompts(qwen, captions, shape):
    """Captions through our Conditioner (the tiny Qwen2.5-VL, padded to qwen_encoder.max_length with a mask, the null
    " " batched with them) give the latents QwenImagePipeline(prompt=..., negative_prompt=" ") gives (padded to each
    batch's longest, no mask where all tokens are valid, cond and uncond run separately): fp32, the trainer's grid;
    non-square latents take the pipeline's img_shapes and μ from their 24 tokens."""
    cfg = load_config("recipes/tiny_qwen_image_cpu.yaml", ["qwen_encoder.max_length=40"])
    conditioner = build_conditioner(cfg, qwen)
    cond, null = conditioner({"captions": captions})
    lengths = cond.text_mask.sum(1).tolist()
    assert (len(set(lengths)) == 1) == (captions == EQUAL_LENGTHS)  # the case named
    ref = _pipeline_latents(
        qwen, {**QWEN_SCHEDULER, "shift_terminal": None}, shape=shape, encoder=conditioner.encoders["qwen"],
        prompt=captions, negative_prompt=" ", max_sequence_length=40,
    )  # fmt: skip
    shift = _shift(shape[1] * shape[2] // 4)
    torch.testing.assert_close(_ours(qwen, cond, null, shift=shift, shape=shape), ref, rtol=0, atol=1e-5)
    # the comparison can fail: attending to the padding is another sampler, and so (non-square) is the shift of 16
    # tokens, if only just (μ moves by 8 · 0.4 / 7936 between 16 and 24 tokens)
    assert _rel(_ours(qwen, Condition(text=cond.text), null, shift=shift, shape=shape), ref) > 1e-3
    if shape != SHAPE:
        assert _rel(_ours(qwen, cond, null, shape=shape), ref) > 1e-4


def test_vae_codec_is_the_pipelines_latent_normalisation(tmp_path):
    """Decoding = QwenImagePipeline's (latents / (1/std) + mean, one frame); encoding = the edit pipelines' argmax
    latents (mean − latents_mean) · (1/std). From a named size and from a saved folder alike."""
    codec = build_codec(size="debug_qwen_image", path=None, scaling_factor=None, channels=4, seed=0)
    assert codec.downsample == 4 and codec.latent_channels == 4
    vae = codec.vae
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = codec.encode(images)
    c = vae.config
    mean, std = torch.tensor(c.latents_mean).view(1, 4, 1, 1, 1), torch.tensor(c.latents_std).view(1, 4, 1, 1, 1)
    expected = (vae.encode(images[:, :, None]).latent_dist.mode() - mean) * (1.0 / std)
    assert latents.shape == (2, 4, 8, 8) and torch.equal(latents, expected[:, :, 0])
    decoded = codec.decode(latents)
    reference = vae.decode(latents[:, :, None] / (1.0 / std) + mean).sample[:, :, 0].clamp(-1, 1)
    assert torch.equal(decoded, reference)
    # the normalisation is live: without it the decoding differs
    assert not torch.allclose(vae.decode(latents[:, :, None]).sample[:, :, 0].clamp(-1, 1), decoded)
    vae.save_pretrained(tmp_path / "vae")
    loaded = build_codec(size=None, path=str(tmp_path), scaling_factor=None, channels=4)
    assert isinstance(loaded.vae, AutoencoderKLQwenImage) and torch.equal(loaded.decode(latents), decoded)
    with pytest.raises(ValueError, match="do not apply to AutoencoderKLQwenImage"):
        build_codec(size="debug_qwen_image", path=None, scaling_factor=0.5, channels=4)
    with pytest.raises(ValueError, match="4-channel latents but the teacher takes 16"):
        build_codec(size="debug_qwen_image", path=None, scaling_factor=None, channels=16)
    assert VAE_SIZES["debug_qwen_image"]["_class_name"] == "AutoencoderKLQwenImage"


def test_vae_decode_equals_the_pipeline_image(qwen):
    """The pipeline's own output (output_type='pt') is the codec's decoding of its latents, mapped to [0, 1]."""
    codec = build_codec(size="debug_qwen_image", path=None, scaling_factor=None, channels=4, seed=0)
    pipe = QwenImagePipeline(
        transformer=qwen.model, scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER), vae=codec.vae,
        text_encoder=None, tokenizer=None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    cond = make_condition("qwen_image", 1)
    kwargs = dict(prompt_embeds=cond.text, latents=pack(draw_noise([0], SHAPE)), num_inference_steps=2)
    kwargs.update(height=4 * SHAPE[1], width=4 * SHAPE[2])  # the debug VAE: 4 px per latent
    image = pipe(**kwargs, output_type="pt").images
    latents = unpack(pipe(**kwargs, output_type="latent").images, *SHAPE[1:])
    torch.testing.assert_close(image, (codec.decode(latents) + 1) / 2, rtol=0, atol=1e-6)


def test_kv_cache_holds_each_groups_text_and_image_keys_and_their_mask(qwen):
    student = ARDStudent(qwen, ARDConfig(num_steps=4, num_causal_layers=3), FlowSchedule(shift=SHIFT)).eval()
    cond = make_condition("qwen_image", 2)  # sample 0's caption is padded: its last 2 text keys are masked
    seen = []
    proc = student.backbone.transformer_blocks[0].attn.processor
    assert isinstance(proc, ARDQwenAttnProcessor)
    attend = proc._attend

    def spy(q, k, v, key_mask):
        out = attend(q, k, v, key_mask)
        keys, _, masks = student.attention_plan.caches[0]
        seen.append(([t.shape[2] for t in keys], [int(m[0].sum()) for m in masks]))
        return out

    proc._attend = spy
    student.sample(torch.randn(2, *SHAPE), cond)
    # 6 text + 16 image tokens per group, 4 + 16 of them valid for sample 0; after step g the cache holds g+1 groups
    assert seen == [([22] * (g + 1), [20] * (g + 1)) for g in range(4)]
    assert student.attention_plan.caches == {}  # dropped after sampling


def test_real_qwen_image_size_builds_on_meta():
    teacher = build_teacher("qwen_image", "qwen_image", device="meta")
    assert sum(p.numel() for p in teacher.parameters()) / 1e9 == pytest.approx(20.43, abs=0.01)
    assert teacher.depth == 60 and teacher.in_channels == 16 and teacher.out_channels == 16
    assert teacher.patch_size == 2 and teacher.text_dim == 3584 and teacher.width == 3072
    teacher.spec.check_latent_side(teacher.model, 128)  # 1024 px
    cond = teacher.example_condition(1, "meta", 512)
    assert cond.text.shape == (1, 512, 3584) and cond.text_mask is None


def test_latent_side_and_fit_teacher_widths():
    spec = build_teacher("qwen_image", "debug").spec
    model = build_teacher("qwen_image", "debug").model
    spec.check_latent_side(model, 6)
    with pytest.raises(ValueError, match="packs 2×2 latent patches"):
        spec.check_latent_side(model, 7)
    with pytest.raises(ValueError, match="RoPE table fits latent sides up to"):
        spec.check_latent_side(model, 20000)
    overrides = spec.width_overrides(64)  # launchers/fit_teacher.py: the RoPE axes must fill the head width
    assert overrides["attention_head_dim"] == sum(overrides["axes_dims_rope"]) == 32
    build_teacher("qwen_image", "debug", **overrides)


def test_bad_input_names_the_cause_and_the_fix(qwen, tmp_path):
    cond = make_condition("qwen_image", 2)
    x, t = torch.randn(2, *SHAPE), torch.tensor([500.0, 500.0])
    with pytest.raises(ValueError, match="reads no pooled text embedding"):
        qwen(x, t, Condition(text=cond.text, pooled=torch.zeros(2, 8)))
    with pytest.raises(ValueError, match="text embeddings"):
        qwen(x, t, Condition(labels=torch.tensor([1, 2])))
    qwen.model.save_pretrained(tmp_path / "pipe" / "transformer")
    with pytest.raises(ValueError, match=r"QwenImageTransformer2DModel \(family 'qwen_image'\).*teacher.family='sd3'"):
        load_teacher(tmp_path / "pipe", family="sd3")
    loaded = load_teacher(tmp_path / "pipe", family="qwen_image")
    assert torch.equal(loaded(x, t, cond), qwen(x, t, cond))
    # variants and layouts the family cannot reproduce are refused, naming them and the fix
    for flag, match in (
        ("zero_cond_t", "zero_cond_t=True"),
        ("use_additional_t_cond", "use_additional_t_cond=True"),
        ("guidance_embeds", "guidance_embeds=True"),
    ):
        with pytest.raises(ValueError, match=rf"{match}.*load its text-to-image base"):
            build_teacher("qwen_image", "debug", **{flag: True})
    with pytest.raises(ValueError, match="in_channels = 4 × out_channels"):
        build_teacher("qwen_image", "debug", out_channels=8)
    other = build_teacher("qwen_image", "debug").model
    other.transformer_blocks[2].attn.set_processor(AttnProcessor2_0())
    with pytest.raises(ValueError, match=r"transformer_blocks.2.attn runs AttnProcessor2_0"):
        type(qwen)(other)
