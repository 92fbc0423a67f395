"""launchers/fit_teacher.py: a few training steps of each family/objective write a loadable diffusers folder."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ard_scale.models.condition import Condition
from ard_scale.models.teachers import load_teacher

LAUNCHER = Path(__file__).resolve().parents[3] / "launchers" / "fit_teacher.py"


def _fit_teacher():
    spec = importlib.util.spec_from_file_location("fit_teacher", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family, objective", [("dit", "epsilon"), ("pixart", "flow")])
def test_fit_teacher_writes_a_loadable_folder(tmp_path, family, objective):
    fit = _fit_teacher()
    out = tmp_path / "teacher"
    argv = [
        "--out",
        str(out),
        "--family",
        family,
        "--objective",
        objective,
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--width",
        "32",
        "--layers",
        "1",
        "--sample-steps",
        "2",
    ]
    result = fit.main(argv)
    assert result["family"] == family and result["objective"] == objective
    teacher = load_teacher(out)
    assert teacher.family == family and teacher.in_channels == 1 and teacher.sample_size == 8
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert (out / "samples.png").is_file() and 0.0 <= json.loads((out / "fit.json").read_text())["sample_accuracy"]
    conditioner = fit.Conditioner(family, teacher.config.get("caption_channels"))
    if family == "pixart":
        conditioner.captions = torch.load(out / "captions.pt")
    cond = conditioner(torch.tensor([3, 10]))
    assert isinstance(cond, Condition)
    assert teacher(torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0]), cond).shape == (2, 2, 8, 8)


def test_recipe_supplies_defaults(tmp_path):
    fit = _fit_teacher()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher: {family: pixart, size: debug}\ndiffusion: {schedule: flow, prediction_type: flow}\n")
    assert fit.recipe_defaults(recipe) == {"family": "pixart", "size": "debug", "objective": "flow"}
