import functools

import pytest

from ard_scale.config import load_config
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import Teacher
from ard_scale.pipeline import ARDPipeline
from ard_scale.trainer.build import (
    build_codec_for,
    build_conditioner,
    build_schedule,
    build_teacher_model,
    embedded_guidance,
    latent_shape,
)


def build_tiny_pipeline(recipe: str) -> ARDPipeline:
    """An ARDPipeline over `recipe`'s debug models with random weights, built in place of an export (tenths of s)."""
    cfg = load_config(recipe)
    teacher = build_teacher_model(cfg)
    student = ARDStudent(
        teacher, cfg.student, build_schedule(cfg, teacher.patch_size), latent_shape=latent_shape(cfg, teacher),
        guidance=embedded_guidance(cfg, teacher),
    )  # fmt: skip
    conditioner = build_conditioner(cfg, Teacher(student.backbone), for_eval=True)
    index = {"ard": {"resolution": cfg.data.resolution, "num_inference_steps": student.num_steps}}
    return ARDPipeline(student, conditioner, build_codec_for(cfg, teacher), cfg, index)


@pytest.fixture(scope="session")
def fresh_tiny_pipeline():
    """fresh_tiny_pipeline(recipe): `build_tiny_pipeline`, a new one each call (for a test that changes it)."""
    return build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_pipeline():
    """tiny_pipeline(recipe): `build_tiny_pipeline`, built once per recipe."""
    return functools.cache(build_tiny_pipeline)
