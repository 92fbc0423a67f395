"""launchers/sample.py on a bare student folder refuses class labels outside the teacher's classes, as ARDPipeline
does: DiT's label table has one more row (the null class of CFG), so label num_classes sampled unconditionally."""

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
