"""The recipe check refuses, before any rank builds a model, what the teacher's architecture would refuse once the
engines are up: student.num_causal_layers beyond its depth, gan.layers it lacks, a data.resolution its fixed
positional embedding does not take (read from teacher.size or teacher.path's config.json, on meta). The planner
refuses the same."""

import pytest

from ard_scale.config import ConfigError, load_config
from ard_scale.config.paths import check_paths
from ard_scale.config.teacher_fit import configured
from ard_scale.models.families import FAMILIES
from ard_scale.models.teachers import build_teacher, teacher_kwargs
from ard_scale.plan import plan
from ard_scale.utils.launch import ROOT

RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"  # the debug DiT: 4 blocks, 8×8 latents at 32 px


def problems(*overrides):
    try:
        check_paths(load_config(RECIPE, list(overrides)))
    except ConfigError as e:
        return e.problems
    return []


def test_the_recipe_check_names_what_the_teachers_architecture_refuses():
    assert problems() == [] and problems("student.num_causal_layers=4") == []
    assert problems("student.num_causal_layers=9") == [
        "student.num_causal_layers: N=9 is larger than the teacher's depth (4 blocks); use 0 <= N <= 4"
    ]
    gan = ("gan.enabled=true", "gan.warmup_steps=1")
    assert problems(*gan, "gan.layers=[0,3]") == []
    assert problems(*gan, "gan.layers=[0,7]") == ["gan.layers: [0, 7], but the teacher has blocks 0..3"]
    [resolution] = problems("data.resolution=64")
    assert resolution.startswith("data.resolution gives 16×16 latents, but this dit teacher takes 8×8")


def test_the_recipe_check_names_a_size_no_builder_has():
    """It passed teacher.size=xl (and any vae.size): the trainer refused it only once its ranks were up."""
    assert problems("teacher.size=dit_xl_2_256", "data.resolution=128") == []  # 32×32 latents
    assert problems("teacher.size=xl", "vae.size=big") == [
        "teacher.size: unknown dit size 'xl'; choose one of debug, dit_xl_2_256, or give teacher.path (a local "
        "folder) instead",
        "vae.size: unknown size 'big'; choose one of debug, debug_qwen_image, or give vae.path (a local folder) "
        "instead",
    ]


def test_the_recipe_check_and_the_planner_name_a_text_encoder_size_no_builder_has():
    """It passed text_encoder.size=xxl (and any CLIP or Qwen2.5-VL size): the trainer refused it only once its ranks
    were up, and the planner planned it as T5-XXL, noting that text_encoder.path None was not found here."""

    def sizes(recipe, *overrides):
        try:
            check_paths(load_config(ROOT / "recipes" / recipe, list(overrides)))
        except ConfigError as e:
            return e.problems
        return []

    assert sizes("tiny_t2i_cpu.yaml", "text_encoder.size=xxl") == [
        "text_encoder.size: unknown size 'xxl'; choose one of debug, or give text_encoder.path (a local folder) instead"
    ]
    assert sizes("tiny_sd3_cpu.yaml", "pooled_encoder.size=l", "pooled_encoder_2.size=g") == [
        "pooled_encoder.size: unknown size 'l'; choose one of debug, debug_narrow, or give pooled_encoder.path (a "
        "local folder) instead",
        "pooled_encoder_2.size: unknown size 'g'; choose one of debug, debug_narrow, or give pooled_encoder_2.path (a "
        "local folder) instead",
    ]
    assert sizes("tiny_qwen_image_cpu.yaml", "qwen_encoder.size=7b") == [
        "qwen_encoder.size: unknown size '7b'; choose one of debug, or give qwen_encoder.path (a local folder) instead"
    ]
    assert sizes("tiny_sd3_cpu.yaml") == sizes("tiny_qwen_image_cpu.yaml") == []
    with pytest.raises(ConfigError, match="text_encoder.size: unknown size 'xxl'; choose one of debug"):
        plan(load_config(ROOT / "recipes" / "tiny_t2i_cpu.yaml", ["text_encoder.size=xxl"]), 1)


def test_the_architecture_comes_from_the_teacher_folder_too(tmp_path):
    build_teacher("dit", "debug").model.save_pretrained(tmp_path / "teacher")  # the same network, as a folder
    folder = [f"teacher.path={tmp_path / 'teacher'}", "teacher.size=null"]
    assert problems(*folder) == []
    assert problems(*folder, "student.num_causal_layers=5")[0].startswith("student.num_causal_layers: N=5")
    build_teacher("pixart", "debug").model.save_pretrained(tmp_path / "pixart")  # another family's network
    assert problems(f"teacher.path={tmp_path / 'pixart'}", "teacher.size=null") == [
        f"teacher.path {tmp_path / 'pixart'} holds a PixArtTransformer2DModel (family 'pixart'), but the recipe says "
        "teacher.family='dit'; set teacher.family=pixart or point teacher.path at a dit model"
    ]


def test_the_planner_refuses_what_training_would():
    cfg = load_config(RECIPE, ["data.resolution=64"])
    with pytest.raises(ConfigError, match="data.resolution gives 16×16 latents, but this dit teacher takes 8×8"):
        plan(cfg, 8, 80.0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_config_view_of_every_size_says_what_the_built_network_says(family):
    """The recipe check reads depth and the latent sides a teacher takes from its config alone (no diffusers import):
    for every family and named size that is what the network built from that config says (on meta)."""
    spec = FAMILIES[family]
    for size in spec.sizes:
        config = teacher_kwargs(family, size)
        teacher = build_teacher(family, size, device="meta")
        assert spec.config_depth(config) == teacher.depth, size
        for side in range(1, 300):
            verdicts = []
            for model in (teacher.model, configured(config)):
                try:
                    spec.check_latent_side(model, side)
                    verdicts.append(None)
                except ValueError as e:
                    verdicts.append(str(e))
            assert verdicts[0] == verdicts[1], (size, side)
