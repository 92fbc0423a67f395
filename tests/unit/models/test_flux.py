"""FLUX.1 on the family plug-in: the teacher equals FluxPipeline (invariant 5: static and dynamic shift, non-square
latents, the scheduler's own shift settings, no guidance embedding, prompts through the Conditioner's CLIP and T5
with num_images_per_prompt), the codec decodes as the pipeline does, the shared student invariants hold (they run for
'flux' in test_student.py / test_discriminator.py through model_helpers), the KV cache holds text and image keys, and
bad input is a clear error."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from model_helpers import make_condition

from ard_scale.config import load_config
from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule, dynamic_shift
from ard_scale.diffusion.trajectory import draw_noise, teacher_trajectory
from ard_scale.models.families.flux import pack, unpack
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher, load_teacher
from ard_scale.models.vae import LatentCodec, build_codec
from ard_scale.trainer.build import build_conditioner

SEEDS, STEPS, GUIDANCE = [3, 7, 11], 8, 3.5
SHAPE = (4, 8, 8)  # debug FLUX: 4 latent channels, 8×8 latent -> 16 packed tokens


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# FLUX.1-dev's scheduler/scheduler_config.json: the shift 3.0 it lists is unused, μ follows the image token count
FLUX_DEV_SCHEDULER = dict(
    use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    shift=3.0,
)  # fmt: skip


def _perturbed(**overrides):
    t = build_teacher("flux", "debug", seed=1, **overrides)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # no zero-initialised gate or head: every block really acts
        for p in t.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return t


@pytest.fixture
def flux():
    return _perturbed()


def test_pack_is_fluxpipelines_packing_and_unpack_inverts_it():
    x = torch.randn(2, 4, 8, 6)
    ref = FluxPipeline._pack_latents(x, 2, 4, 8, 6)
    assert torch.equal(pack(x), ref)
    assert torch.equal(unpack(ref, 8, 6), x)


def _pipeline(teacher, scheduler, conditioner=None, vae=None):
    """FluxPipeline around the teacher; given the Conditioner, with its CLIP and T5 (then it takes prompts)."""
    clip, t5 = (conditioner.encoders["clip"], conditioner.encoders["t5"]) if conditioner else (None, None)
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, transformer=teacher.model,
        text_encoder=getattr(clip, "model", None), tokenizer=getattr(clip, "tokenizer", None),
        text_encoder_2=getattr(t5, "model", None), tokenizer_2=getattr(t5, "tokenizer", None),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_latents(pipe, cond=None, *, shape=SHAPE, seeds=SEEDS, **inputs):
    """The pipeline's final latents from `cond`'s embeddings (or from `inputs`' prompts), unpacked to (B, C, H, W)."""
    if cond is not None:
        inputs.update(prompt_embeds=cond.text, pooled_prompt_embeds=cond.pooled)
    packed = pipe(
        latents=pack(draw_noise(seeds, shape)),
        guidance_scale=GUIDANCE,
        num_inference_steps=STEPS,
        height=8 * shape[1],
        width=8 * shape[2],
        output_type="latent",
        **inputs,
    ).images
    return unpack(packed, *shape[1:])


def _ours(teacher, shift, cond, *, shape=SHAPE, seeds=SEEDS):
    # the student grid is the pipeline's 4-step grid, which the teacher's 8-step grid contains
    return teacher_trajectory(
        teacher, FlowSchedule(shift=shift), cond, latent_shape=shape, seeds=seeds, num_student_steps=4, substeps=2,
        solver="euler",
    ).final  # fmt: skip


@pytest.mark.parametrize("dynamic", [False, True], ids=["static-shift", "dynamic-shift"])
def test_teacher_trajectory_equals_fluxpipeline_latents(flux, dynamic):
    """Invariant 5: same noise, steps, distilled guidance and shift -> the same latents (fp32, <= 1e-5)."""
    cond = make_condition("flux", len(SEEDS))
    cond.guidance = torch.full((len(SEEDS),), GUIDANCE)
    if dynamic:  # FLUX.1-dev's scheduler: μ from the image token count (16 here)
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
        shift = dynamic_shift(16, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15)
    else:
        scheduler, shift = FlowMatchEulerDiscreteScheduler(shift=3.0), 3.0
    ref = _pipeline_latents(_pipeline(flux, scheduler), cond)
    assert _rel(_ours(flux, shift, cond), ref) <= 1e-5
    # the comparison can fail: another shift, or another guidance value, is another sampler
    assert _rel(_ours(flux, shift * 1.2, cond), ref) > 1e-3
    other = Condition(text=cond.text, pooled=cond.pooled, guidance=torch.full((len(SEEDS),), 2.0))
    assert _rel(_ours(flux, shift, other), ref) > 1e-3


# FluxPipeline reads base/max shift and sequence lengths from its scheduler's config: other values than FLUX.1-dev's
OTHER_SHIFTS = dict(base_image_seq_len=8, max_image_seq_len=64, base_shift=0.3, max_shift=1.5)


@pytest.mark.parametrize(
    "scheduler_kwargs, shape, guidance_embeds, shift, wrong_shift",
    [
        pytest.param(
            FLUX_DEV_SCHEDULER, (4, 8, 12), True, dynamic_shift(24), dynamic_shift(16), id="non-square-dynamic-shift"
        ),  # 8×12 latents: 24 packed tokens set μ, not the 16 of a square 8×8
        pytest.param(
            {**FLUX_DEV_SCHEDULER, **OTHER_SHIFTS},
            SHAPE,
            True,
            dynamic_shift(16, base_seq_len=8, max_seq_len=64, base_shift=0.3, max_shift=1.5),
            dynamic_shift(16),
            id="scheduler-config-shifts",
        ),
        pytest.param(dict(shift=1.0), SHAPE, False, 1.0, 1.2, id="no-guidance-embedding"),  # FLUX.1-schnell style
    ],
)
def test_teacher_trajectory_equals_fluxpipeline_latents_in_other_settings(
    flux, scheduler_kwargs, shape, guidance_embeds, shift, wrong_shift
):
    """Invariant 5 beyond the square, guidance-distilled FLUX.1-dev case: same latents (fp32) with non-square latents
    (RoPE rows and columns, μ from their token count), with the scheduler config's own shift settings, and for a
    teacher without guidance embedding (the pipeline then passes no guidance, whatever guidance_scale says)."""
    teacher = flux if guidance_embeds else _perturbed(guidance_embeds=False)
    cond = make_condition("flux", len(SEEDS))
    cond.guidance = torch.full((len(SEEDS),), GUIDANCE) if guidance_embeds else None
    ref = _pipeline_latents(_pipeline(teacher, FlowMatchEulerDiscreteScheduler(**scheduler_kwargs)), cond, shape=shape)
    torch.testing.assert_close(_ours(teacher, shift, cond, shape=shape), ref, rtol=0, atol=1e-5)
    # the comparison can fail: the shift of another token count or of the default settings is another sampler
    assert _rel(_ours(teacher, wrong_shift, cond, shape=shape), ref) > 1e-3


def test_teacher_trajectory_from_captions_equals_fluxpipeline_called_with_prompts(flux):
    """Captions through our Conditioner (tiny CLIP + T5) give the latents FluxPipeline gives for the same prompts
    with num_images_per_prompt=2: our batch is each caption repeated in place, one seed per image (fp32)."""
    cfg = load_config("recipes/tiny_flux_cpu.yaml", ["pooled_encoder.max_length=77"])  # the pipeline pads CLIP to 77
    conditioner = build_conditioner(cfg, flux)
    captions, seeds = ["a handwritten digit seven", "a zero"], [3, 7, 11, 13]
    pipe = _pipeline(flux, FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER), conditioner)
    ref = _pipeline_latents(
        pipe, seeds=seeds, prompt=captions, num_images_per_prompt=2, max_sequence_length=cfg.text_encoder.max_length
    )
    cond, _ = conditioner({"captions": [captions[0], captions[0], captions[1], captions[1]]})
    torch.testing.assert_close(_ours(flux, dynamic_shift(16), cond, seeds=seeds), ref, rtol=0, atol=1e-5)
    # the comparison can fail: the captions repeated as a whole batch pair other seeds with them
    swapped, _ = conditioner({"captions": captions * 2})
    assert _rel(_ours(flux, dynamic_shift(16), swapped, seeds=seeds), ref) > 1e-3


def test_vae_decode_equals_the_pipeline_image(flux):
    """The pipeline's own output (output_type='pt': latents / scaling_factor + shift_factor, decoded) is the codec's
    decoding of its latents, mapped to [0, 1]; FLUX.1's VAE carries a shift factor (0.1159), read from its config."""
    vae = build_codec(size="debug", path=None, scaling_factor=None, channels=4, seed=0).vae
    vae.register_to_config(shift_factor=0.25, scaling_factor=0.7)
    codec = LatentCodec(vae)
    assert (codec.shift_factor, codec.scaling_factor) == (0.25, 0.7)
    pipe = _pipeline(flux, FlowMatchEulerDiscreteScheduler(), vae=vae)
    cond = make_condition("flux", 1)
    kwargs = dict(prompt_embeds=cond.text, pooled_prompt_embeds=cond.pooled, latents=pack(draw_noise([0], SHAPE)))
    kwargs.update(num_inference_steps=2, height=4 * SHAPE[1], width=4 * SHAPE[2])  # the debug VAE: 4 px per latent
    image = pipe(**kwargs, output_type="pt").images
    latents = unpack(pipe(**kwargs, output_type="latent").images, *SHAPE[1:])
    torch.testing.assert_close(image, (codec.decode(latents) + 1) / 2, rtol=0, atol=1e-6)
    # the comparison can fail: without the shift factor the decoding differs
    assert not torch.allclose(image, (LatentCodec(vae, shift_factor=0.0).decode(latents) + 1) / 2, atol=1e-3)


def test_kv_cache_holds_each_groups_text_and_image_keys(flux):
    student = ARDStudent(flux, ARDConfig(num_steps=4, num_causal_layers=3), FlowSchedule(shift=3.0)).eval()
    cond = make_condition("flux", 2)
    seen = {}
    proc = student.backbone.transformer_blocks[0].attn.processor
    attend = proc._attend

    def spy(q, k, v):
        out = attend(q, k, v)
        seen.setdefault("sizes", []).append([t.shape[2] for t in student.attention_plan.caches[0][0]])
        return out

    proc._attend = spy
    student.sample(torch.randn(2, *SHAPE), cond)
    # 6 T5 tokens + 16 image tokens per group; after step g the cache holds g+1 groups
    assert seen["sizes"] == [[22] * (g + 1) for g in range(4)]
    assert student.attention_plan.caches == {}  # dropped after sampling


def test_bad_input_names_the_cause_and_the_fix(flux, tmp_path):
    student = ARDStudent(flux, ARDConfig(num_steps=4, num_causal_layers=2), FlowSchedule()).eval()
    cond = make_condition("flux", 2)
    with pytest.raises(ValueError, match="multiples of the patch size 2"):
        student.sample(torch.randn(2, 4, 7, 8), cond)
    with pytest.raises(ValueError, match="pooled CLIP"):
        flux(torch.randn(2, *SHAPE), torch.tensor([500.0, 500.0]), Condition(text=cond.text))
    with pytest.raises(ValueError, match="guidance-distilled"):
        flux(torch.randn(2, *SHAPE), torch.tensor([500.0, 500.0]), Condition(text=cond.text, pooled=cond.pooled))
    with pytest.raises(ValueError, match="text embeddings"):
        flux(torch.randn(2, *SHAPE), torch.tensor([500.0, 500.0]), Condition(labels=torch.tensor([1, 2])))
    flux.model.save_pretrained(tmp_path / "pipe" / "transformer")
    with pytest.raises(ValueError, match=r"FluxTransformer2DModel \(family 'flux'\).*teacher.family='pixart'"):
        load_teacher(tmp_path / "pipe", family="pixart")
    loaded = load_teacher(tmp_path / "pipe", family="flux")
    x, t = torch.randn(2, *SHAPE), torch.tensor([100.0, 900.0])
    assert torch.equal(loaded(x, t, cond), flux(x, t, cond))


def test_real_flux_1_dev_builds_on_meta():
    teacher = build_teacher("flux", "flux_1_dev", device="meta")
    params = sum(p.numel() for p in teacher.parameters())
    assert params / 1e9 == pytest.approx(11.9, abs=0.1)  # FLUX.1-dev: 11.9B
    assert teacher.depth == 57 and teacher.in_channels == 16 and teacher.patch_size == 2
