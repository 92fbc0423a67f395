import functools

import pytest
import torch

from ard_scale.config import dump_yaml, load_config, to_dict
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


@pytest.fixture
def precomputed_run(tmp_path):
    """A run trained on precomputed text (its recipe names no T5) whose shards' text_encoding.json records the T5 they
    were encoded with: `t5`, a tiny random T5 folder; `other`, one of the same width with other weights."""
    from eval_assets import write_tiny_t5

    from ard_scale.data.text_encoding import write_text_encoding
    from ard_scale.models.folders import encoder_fingerprint

    t5, other = write_tiny_t5(tmp_path / "t5"), write_tiny_t5(tmp_path / "other_t5", vocab_size=400)
    text = tmp_path / "text"
    text.mkdir()
    fingerprint = encoder_fingerprint(str(t5), "text_encoder")
    fields = {"path": str(t5), "size": None, "max_length": 8, "fingerprint": fingerprint}
    write_text_encoding(
        str(text), family="pixart", captions="lower-cased and stripped", sections={"t5": ("text_encoder", fields)},
        null={"text": torch.zeros(8, 24), "text_mask": torch.ones(8)},
    )  # fmt: skip
    recipe = to_dict(load_config("recipes/tiny_t2i_cpu.yaml"))
    recipe["text_encoder"].update(size=None, path=None, use_precomputed=True)
    recipe["data"].update(format="mds", path=str(text))
    run = tmp_path / "run"
    tag = run / "checkpoints" / "step_00000003"
    tag.mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_00000003")
    dump_yaml(recipe, tag / "config.yaml")
    return run, t5, other
