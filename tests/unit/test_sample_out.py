"""launchers/sample.py writes --out whole, as the other tools write their folders: an --out that is a file or holds
files (older samples the new grid would sit beside) is one `error:` line before any sampling, not a traceback."""

import runpy
import sys

import pytest
import torch

from ard_scale.config import load_config
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import build_schedule, build_teacher_model, latent_shape
from ard_scale.utils.launch import ROOT


@pytest.fixture
def sample(tmp_path, monkeypatch):
    """sample(out): run sample.py on a bare tiny DiT student folder with two class labels into `out`."""
    import ard_scale.checkpoint.export as export

    cfg = load_config("recipes/tiny_cpu.yaml")
    teacher = build_teacher_model(cfg)
    student = ARDStudent(teacher, cfg.student, build_schedule(cfg), latent_shape=latent_shape(cfg, teacher))
    loads = []
    monkeypatch.setattr(export, "load_exported_student", lambda *a, **k: loads.append(a) or student)

    def run(out, *extra):
        argv = ["sample", str(tmp_path), "--class-labels", "3", "4", "--out", str(out), *extra]
        monkeypatch.setattr(sys, "argv", argv)
        runpy.run_path(str(ROOT / "launchers" / "sample.py"), run_name="__main__")

    run.loads = loads
    return run


def test_sample_writes_a_new_out_folder(sample, tmp_path):
    sample(tmp_path / "samples")
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["grid.png", "sample_000.png", "sample_001.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left


def test_sample_refuses_an_out_folder_with_older_samples(sample, tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "sample_005.png").write_bytes(b"older")
    with pytest.raises(SystemExit) as stopped:
        sample(out)
    assert str(stopped.value.code).startswith(f"error: {out} exists and is not empty; choose a new folder")
    assert [p.name for p in out.iterdir()] == ["sample_005.png"]
    assert sample.loads == []  # refused before the (slow) load


def test_sample_refuses_an_out_that_is_a_file(sample, tmp_path):
    out = tmp_path / "grid.png"
    out.write_bytes(b"mine")
    with pytest.raises(SystemExit) as stopped:
        sample(out)
    assert str(stopped.value.code).startswith(f"error: {out} exists"), stopped.value.code
    assert out.read_bytes() == b"mine" and sample.loads == []


def test_a_failed_write_leaves_no_out_folder(sample, tmp_path, monkeypatch):
    import ard_scale.evaluation.grids as grids

    def no_room(*a, **k):
        raise ValueError("no room for grid.png")

    monkeypatch.setattr(grids, "save_png", no_room)  # after the samples, before the grid
    with pytest.raises(SystemExit, match="error: no room for grid.png"):
        sample(tmp_path / "samples")
    assert not (tmp_path / "samples").exists()  # not the samples without their grid


def test_a_bare_student_refuses_another_size(sample, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        sample(tmp_path / "samples", "--height", "64")
    assert str(stopped.value.code).startswith("error: --height/--width: a bare student folder samples at the size")
    assert sample.loads == [] and not (tmp_path / "samples").exists()


def test_a_save_tensor_path_in_a_missing_folder_is_refused_before_sampling(sample, tmp_path):
    """--save-tensor into a folder that does not exist was a torch.save traceback after the samples were written."""
    with pytest.raises(SystemExit, match=r"error: --save-tensor .*x.pt: its folder .*no_such_folder does not exist"):
        sample(tmp_path / "out", "--save-tensor", str(tmp_path / "no_such_folder" / "x.pt"))
    assert not (tmp_path / "out").exists() and sample.loads == []  # nothing sampled, nothing written
    sample(tmp_path / "out", "--save-tensor", str(tmp_path / "x.pt"))
    assert torch.load(tmp_path / "x.pt").shape[0] == 2


def test_a_teacher_given_for_a_pipeline_folder_is_said_to_be_ignored(fresh_tiny_pipeline, tmp_path, monkeypatch):
    """--teacher serves LoRA adapter exports only; with a pipeline folder (its LoRA student merged) it did nothing."""
    from ard_scale.pipeline import MODEL_INDEX, ARDPipeline

    pipe = fresh_tiny_pipeline("recipes/tiny_cpu.yaml")
    (tmp_path / MODEL_INDEX).write_text("{}")  # a pipeline folder, loaded as `pipe` (the tiny one, not an export)
    monkeypatch.setattr(ARDPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))
    argv = ["sample", str(tmp_path), "--class-labels", "3", "--teacher", "/models/t", "--out", str(tmp_path / "o")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.warns(UserWarning, match="--teacher /models/t is ignored: .* is a pipeline folder"):
        runpy.run_path(str(ROOT / "launchers" / "sample.py"), run_name="__main__")
    assert (tmp_path / "o" / "grid.png").is_file()


def test_sample_names_sort_in_sample_order_past_a_thousand(tmp_path):
    """sample_{i:03d}: from 1,001 samples on, sample_1000.png sorted before sample_101.png."""
    import numpy as np

    launcher = runpy.run_path(str(ROOT / "launchers" / "sample.py"))
    launcher["_write_samples"](tmp_path, np.zeros((1001, 4, 4, 3), np.uint8), ["class 0"] * 1001, 64)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != "grid.png")
    assert names == [f"sample_{i:04d}.png" for i in range(1001)]  # sorted by name is sample order
    assert launcher["sample_names"](1000)[-1] == "sample_999.png"  # 3 digits up to 1,000 samples, as before
