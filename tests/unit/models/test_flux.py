"""FLUX.1 on the family plug-in: the teacher equals FluxPipeline (invariant 5, static and dynamic shift), the shared
student invariants hold (they run for 'flux' in test_student.py / test_discriminator.py through model_helpers), the
KV cache holds text and image keys, and bad input is a clear error."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from model_helpers import make_condition

from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule, dynamic_shift
from ard_scale.diffusion.trajectory import draw_noise, teacher_trajectory
from ard_scale.models.families.flux import pack, unpack
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher, load_teacher

SEEDS, STEPS, GUIDANCE = [3, 7, 11], 8, 3.5
SHAPE = (4, 8, 8)  # debug FLUX: 4 latent channels, 8×8 latent -> 16 packed tokens


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture
def flux():
    t = build_teacher("flux", "debug", seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # no zero-initialised gate or head: every block really acts
        for p in t.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return t


def test_pack_is_fluxpipelines_packing_and_unpack_inverts_it():
    x = torch.randn(2, 4, 8, 6)
    ref = FluxPipeline._pack_latents(x, 2, 4, 8, 6)
    assert torch.equal(pack(x), ref)
    assert torch.equal(unpack(ref, 8, 6), x)


def _pipeline_latents(teacher, scheduler, cond):
    pipe = FluxPipeline(
        scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=teacher.model,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    packed = pipe(
        prompt_embeds=cond.text,
        pooled_prompt_embeds=cond.pooled,
        latents=pack(draw_noise(SEEDS, SHAPE)),
        guidance_scale=GUIDANCE,
        num_inference_steps=STEPS,
        height=8 * SHAPE[1],
        width=8 * SHAPE[2],
        output_type="latent",
    ).images
    return unpack(packed, SHAPE[1], SHAPE[2])


def _ours(teacher, shift, cond):
    # the student grid is the pipeline's 4-step grid, which the teacher's 8-step grid contains
    return teacher_trajectory(
        teacher, FlowSchedule(shift=shift), cond, latent_shape=SHAPE, seeds=SEEDS, num_student_steps=4, substeps=2,
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
    ref = _pipeline_latents(flux, scheduler, cond)
    assert _rel(_ours(flux, shift, cond), ref) <= 1e-5
    # the comparison can fail: another shift, or another guidance value, is another sampler
    assert _rel(_ours(flux, shift * 1.2, cond), ref) > 1e-3
    other = Condition(text=cond.text, pooled=cond.pooled, guidance=torch.full((len(SEEDS),), 2.0))
    assert _rel(_ours(flux, shift, other), ref) > 1e-3


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
