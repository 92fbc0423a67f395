"""ARDPipeline.from_pretrained reads the encoders and VAE its recipe.yaml names from inside the pipeline folder,
wherever it is called from: a missing one is an error naming the folder, never the current directory's copy."""

import json

import pytest

import ard_scale.pipeline as pipeline
from ard_scale.config import dump_yaml, load_config, to_dict
from ard_scale.models.text_encoder import build_t5
from ard_scale.pipeline import ARDPipeline


@pytest.fixture(scope="module")
def t5():
    return build_t5("debug")


def save_t5(t5, folder):
    for part in t5:
        part.save_pretrained(folder)


@pytest.fixture
def pipe_folder(tmp_path, monkeypatch, tiny_pipeline):
    """A pipeline folder as export_pipeline writes it for tiny_t2i_cpu (its T5 in text_encoder/), with the student
    loaded from memory."""
    cfg = load_config("recipes/tiny_t2i_cpu.yaml")
    recipe = to_dict(cfg)
    recipe["text_encoder"].update(path="text_encoder", size=None)
    recipe["teacher"].update(path="transformer", size=None)
    folder = tmp_path / "pipe"
    folder.mkdir()
    dump_yaml(recipe, folder / pipeline.RECIPE)
    (folder / pipeline.MODEL_INDEX).write_text(json.dumps({"_class_name": "ARDPipeline", "ard": {}}))
    student = tiny_pipeline("recipes/tiny_t2i_cpu.yaml").student
    monkeypatch.setattr(pipeline, "load_exported_student", lambda *a, **k: student)
    return folder


def test_a_missing_encoder_folder_is_named_and_not_read_from_the_current_directory(
    pipe_folder, t5, tmp_path, monkeypatch
):
    cwd = tmp_path / "elsewhere"
    save_t5(t5, cwd / "text_encoder")  # what the recipe's relative path would find from here
    monkeypatch.chdir(cwd)
    with pytest.raises(ValueError) as e:
        ARDPipeline.from_pretrained(pipe_folder, verify=False)
    assert f"{pipe_folder} is an incomplete ARD pipeline folder" in str(e.value)
    assert f"{pipe_folder / 'text_encoder'} is missing" in str(e.value)


def test_the_encoder_is_read_from_the_pipeline_folder_from_any_directory(pipe_folder, t5, tmp_path, monkeypatch):
    save_t5(t5, pipe_folder / "text_encoder")
    monkeypatch.chdir(tmp_path)
    pipe = ARDPipeline.from_pretrained(pipe_folder.relative_to(tmp_path), verify=False)
    assert pipe.cfg.text_encoder.path == "pipe/text_encoder"
    assert pipe("a cat", output_type="latent").latents.shape[0] == 1
