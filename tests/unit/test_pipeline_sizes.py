"""ARDPipeline's height/width: a size its VAE cannot produce is refused with the reason, never rounded down."""

import pytest
import torch

from ard_scale.config import load_config
from ard_scale.models.student import ARDStudent
from ard_scale.pipeline import ARDPipeline
from ard_scale.trainer.build import (
    build_codec_for,
    build_schedule,
    build_teacher_model,
    embedded_guidance,
    latent_shape,
)


@pytest.fixture(scope="module")
def flux_pipe():
    cfg = load_config("recipes/tiny_flux_cpu.yaml")
    teacher = build_teacher_model(cfg)
    student = ARDStudent(
        teacher, cfg.student, build_schedule(cfg, teacher.patch_size), latent_shape=latent_shape(cfg, teacher),
        guidance=embedded_guidance(cfg, teacher),
    )  # fmt: skip
    index = {"ard": {"resolution": cfg.data.resolution}}
    return ARDPipeline(student, None, build_codec_for(cfg, teacher), cfg, index)


def test_a_size_the_vae_cannot_produce_is_refused_not_rounded(flux_pipe):
    down = flux_pipe.codec.downsample
    C, h, w = flux_pipe._latent_shape(None, None)
    assert flux_pipe._latent_shape(10 * down, 10 * down) == (C, 10, 10)  # FLUX takes other sizes
    for bad in (10 * down + 2, 0, -down):
        with pytest.raises(ValueError, match=f"height={bad}: must be a positive multiple"):
            flux_pipe._latent_shape(bad, bad)
    with pytest.raises(ValueError, match="width="):
        flux_pipe._latent_shape(10 * down, 10 * down + 1)
    assert torch.Size((C, h, w)) == torch.Size(flux_pipe._latent_shape(h * down, None))
