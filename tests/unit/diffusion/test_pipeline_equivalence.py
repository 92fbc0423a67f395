"""Invariant 5: the teacher trajectory's final state equals the latents of the teacher's own diffusers pipeline
(DiTPipeline, PixArtSigmaPipeline) for the same noise, scheduler, steps and guidance, ≤1e-5 relative in fp32.

Conventions matched: the pipeline's integer timesteps (its scheduler's `timestep_spacing`) become an explicit teacher
grid via `diffusers_grid`; guidance out_u + w·(out_c − out_u) on all latent channels (both pipelines), learned-sigma
channels dropped; DiTPipeline's null class is hard-coded 1000, so the DiT teacher has 1000 classes here.
"""

from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DPMSolverMultistepScheduler,
    PixArtSigmaPipeline,
)

from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.trajectory import diffusers_grid, draw_noise, teacher_trajectory
from ard_scale.models.teachers import build_teacher

SEEDS = [3, 7, 11]
NUM_STEPS = 12
SCHEDULERS = {"ddim": lambda: DDIMScheduler(clip_sample=False), "dpm++2m": lambda: DPMSolverMultistepScheduler()}


def _perturbed(teacher):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # no zero-initialised gate or head: every block really acts
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return teacher


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _ours(teacher, scheduler, cond, null, guidance, **kw):
    schedule, grid, solver = diffusers_grid(scheduler)
    return teacher_trajectory(
        teacher,
        schedule,
        cond,
        null_cond=null,
        guidance_scale=guidance,
        solver=solver,
        teacher_grid=grid,
        student_grid=grid[::3],
        latent_shape=kw.pop("latent_shape", (4, 8, 8)),
        seeds=SEEDS,
        **kw,
    )


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_dit_pipeline(sched):
    teacher = _perturbed(build_teacher("dit", "debug", seed=1, num_embeds_ada_norm=1000))
    # DiTPipeline always decodes; a tiny VAE whose decode records the latents it is given (scaling factor 1).
    vae = AutoencoderKL(
        block_out_channels=(8,), layers_per_block=1, norm_num_groups=8, latent_channels=4, scaling_factor=1.0
    )
    captured = {}

    def decode(z, *args, **kwargs):
        captured["latents"] = z.clone()
        return SimpleNamespace(sample=z[:, :3])

    vae.decode = decode
    pipe = DiTPipeline(transformer=teacher.model, vae=vae, scheduler=SCHEDULERS[sched]())
    pipe.set_progress_bar_config(disable=True)
    labels = [1, 5, 9]
    # DiTPipeline takes no `latents=`: a list of per-sample CPU generators draws exactly `draw_noise(SEEDS)`.
    pipe(
        class_labels=labels,
        guidance_scale=1.5,
        generator=[torch.Generator().manual_seed(s) for s in SEEDS],
        num_inference_steps=NUM_STEPS,
        output_type="np",
    )
    ref = captured["latents"]
    cond, null = Condition(labels=torch.tensor(labels)), teacher.null_condition(3)
    tr = _ours(teacher, pipe.scheduler, cond, null, 1.5)
    assert _rel(tr.final, ref) <= 1e-5
    # the comparison can fail: facebookresearch/DiT's 3-channel guidance is a different sampler
    assert _rel(_ours(teacher, pipe.scheduler, cond, null, 1.5, guided_channels=3).final, ref) > 1e-3


@pytest.mark.parametrize("sched", SCHEDULERS)
@pytest.mark.parametrize("hw", [(8, 8), (8, 12)], ids=["square", "bucket"])  # 64×96 px: an aspect-ratio bucket
def test_pixart_sigma_pipeline(sched, hw):
    teacher = _perturbed(build_teacher("pixart", "debug", seed=1))
    g = torch.Generator().manual_seed(0)
    text = torch.randn(3, 6, 24, generator=g)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    null_text = torch.randn(1, 6, 24, generator=g).expand(3, -1, -1).contiguous()  # the empty caption's embedding
    null_mask = torch.zeros(3, 6, dtype=torch.long)
    null_mask[:, :2] = 1
    # prompt embeddings given directly: no tokenizer / T5 / VAE needed for output_type="latent"
    pipe = PixArtSigmaPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=teacher.model, scheduler=SCHEDULERS[sched]()
    )
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        negative_prompt=None,
        prompt_embeds=text,
        prompt_attention_mask=mask,
        negative_prompt_embeds=null_text,
        negative_prompt_attention_mask=null_mask,
        guidance_scale=4.5,
        latents=draw_noise(SEEDS, (4, *hw)),
        num_inference_steps=NUM_STEPS,
        output_type="latent",
        use_resolution_binning=False,
        height=8 * hw[0],
        width=8 * hw[1],
    ).images
    cond, null = Condition(text=text, text_mask=mask), Condition(text=null_text, text_mask=null_mask)
    tr = _ours(teacher, pipe.scheduler, cond, null, 4.5, latent_shape=(4, *hw))
    assert tr.final.shape == ref.shape == (3, 4, *hw) and _rel(tr.final, ref) <= 1e-5
    # the comparison can fail: another guidance scale is another sampler
    assert _rel(_ours(teacher, pipe.scheduler, cond, null, 4.0, latent_shape=(4, *hw)).final, ref) > 1e-3
