"""The recipe check (`missing_paths`, run by launchers/train.py and `python -m ard_scale.config` before any rank
starts) refuses a teacher, T5 or VAE folder that exists but lacks the files its loader reads, naming the key and the
files, and takes the folder layouts the loaders take (a model folder, or a pipeline folder's subfolder)."""

import pytest

from ard_scale.config import load_config
from ard_scale.config.paths import missing_paths

RECIPE = "recipes/tiny_t2i_cpu.yaml"


def recipe_with(teacher, t5, vae):
    return load_config(
        RECIPE,
        [f"teacher.path={teacher}", "teacher.size=null", f"text_encoder.path={t5}", "text_encoder.size=null",
         f"vae.path={vae}", "vae.size=null"],
    )  # fmt: skip


def test_folders_without_their_model_files_are_named_with_what_they_lack(tmp_path):
    for name in ("teacher", "t5", "vae"):
        (tmp_path / name).mkdir()
    (tmp_path / "t5" / "config.json").write_text("{}")  # the model's config, but no tokenizer
    problems = missing_paths(recipe_with(tmp_path / "teacher", tmp_path / "t5", tmp_path / "vae"))
    assert problems == [
        f"teacher.path: {tmp_path / 'teacher'} is not a diffusers model folder: it has no config.json (nor "
        "transformer/config.json)",
        f"text_encoder.path: T5 folder '{tmp_path / 't5'}' lacks model or tokenizer files ['tokenizer_config.json']; "
        "save both with save_pretrained",
        f"vae.path: {tmp_path / 'vae'} is not a diffusers AutoencoderKL folder (no config.json, nor vae/config.json); "
        "give the VAE's local folder",
    ]


@pytest.mark.parametrize("layout", ["model folders", "pipeline folder"])
def test_the_loaders_folder_layouts_pass(tmp_path, layout):
    pipe = tmp_path / "pipe"
    teacher, vae = (pipe / "transformer", pipe / "vae") if layout == "pipeline folder" else (pipe / "t", pipe / "v")
    t5 = tmp_path / "t5"
    for folder in (teacher, vae, t5):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (t5 / "tokenizer_config.json").write_text("{}")
    given = (pipe, pipe) if layout == "pipeline folder" else (teacher, vae)
    assert missing_paths(recipe_with(given[0], t5, given[1])) == []
