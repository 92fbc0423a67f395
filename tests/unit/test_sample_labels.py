"""launchers/sample.py on a bare student folder refuses class labels outside the teacher's classes, as ARDPipeline
does: DiT's label table has one more row (the null class of CFG), so label num_classes sampled unconditionally. And
given the other kind of condition (prompts for a class-conditional student, labels for a text one), pipeline or bare
folder, it names the flags that student takes."""

import runpy
import sys

import pytest

from ard_scale.config import load_config
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import build_schedule, build_teacher_model, latent_shape
from ard_scale.utils.launch import ROOT


@pytest.mark.parametrize("label", ["10", "-1"])
def test_a_bare_students_labels_outside_its_classes_are_refused(label, tmp_path, monkeypatch):
    import ard_scale.checkpoint.export as export

    cfg = load_config("recipes/tiny_cpu.yaml")  # dit, teacher.num_classes: 10
    teacher = build_teacher_model(cfg)
    student = ARDStudent(teacher, cfg.student, build_schedule(cfg), latent_shape=latent_shape(cfg, teacher))
    monkeypatch.setattr(export, "load_exported_student", lambda *a, **k: student)
    out = tmp_path / "samples"
    monkeypatch.setattr(sys, "argv", ["sample", str(tmp_path), "--class-labels", "3", label, "--out", str(out)])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / "launchers" / "sample.py"), run_name="__main__")
    assert "--class-labels must lie in 0..9" in str(stopped.value.code)
    assert not out.exists()


def run_sample(monkeypatch, folder, *args):
    """launchers/sample.py on `folder`; its `error:` line (SystemExit's code)."""
    monkeypatch.setattr(sys, "argv", ["sample", str(folder), *args, "--out", str(folder / "samples")])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / "launchers" / "sample.py"), run_name="__main__")
    assert not (folder / "samples").exists()
    return str(stopped.value.code)


@pytest.mark.parametrize(
    ("recipe", "args", "says"),
    [
        ("recipes/tiny_cpu.yaml", ["--prompt", "a seven"], "class-conditional dit student: give --class-labels (0..9)"),
        ("recipes/tiny_t2i_cpu.yaml", ["--class-labels", "7"], "text-to-image pixart student: give --prompt or --pro"),
    ],
)
def test_a_pipeline_given_the_other_kind_of_condition_names_the_flags_it_takes(
    recipe, args, says, tiny_pipeline, tmp_path, monkeypatch
):
    """It said "pass class_labels=[...] (no prompt)" (or "pass prompt='...'"): ARDPipeline's keyword arguments, which
    a sample.py user has no way to give."""
    from ard_scale.pipeline import MODEL_INDEX, ARDPipeline

    (tmp_path / MODEL_INDEX).write_text("{}")  # a pipeline folder, loaded as the tiny pipeline (not an export)
    monkeypatch.setattr(ARDPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: tiny_pipeline(recipe)))
    assert says in run_sample(monkeypatch, tmp_path, *args)


@pytest.mark.parametrize(
    ("recipe", "args", "says"),
    [
        ("recipes/tiny_cpu.yaml", ["--prompt", "a seven"], "class-conditional dit student: give --class-labels (0..9)"),
        ("recipes/tiny_t2i_cpu.yaml", ["--class-labels", "7"], "text-to-image pixart student: give --prompts-embed"),
    ],
)
def test_a_bare_student_given_the_other_kind_of_condition_names_the_flags_it_takes(
    recipe, args, says, tiny_pipeline, tmp_path, monkeypatch
):
    """A bare class-conditional student given --prompt was told to give --prompts-embeddings (which it refuses in
    turn), a text one given --class-labels only that it "needs text embeddings"."""
    import ard_scale.checkpoint.export as export

    monkeypatch.setattr(export, "load_exported_student", lambda *a, **k: tiny_pipeline(recipe).student)
    assert says in run_sample(monkeypatch, tmp_path, *args)
