"""launchers/sample.py --prompts-embeddings on a bare student folder: a file it cannot read, or embeddings of other
shapes than the student reads, is one `error:` line naming the file and the shape wanted, not a traceback from the
network's first layer, nor (a single prompt's (tokens, width) embedding) one image per token."""

import re
import runpy
import sys

import pytest
import torch

from ard_scale.config import load_config
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import build_schedule, build_teacher_model, embedded_guidance, latent_shape
from ard_scale.utils.launch import ROOT


def student_of(recipe: str) -> ARDStudent:
    cfg = load_config(recipe)
    teacher = build_teacher_model(cfg)
    return ARDStudent(
        teacher, cfg.student, build_schedule(cfg, teacher.patch_size), latent_shape=latent_shape(cfg, teacher),
        guidance=embedded_guidance(cfg, teacher),
    )  # fmt: skip


@pytest.fixture(scope="module")
def students():
    return {"pixart": student_of("recipes/tiny_t2i_cpu.yaml"), "flux": student_of("recipes/tiny_flux_cpu.yaml")}


def sample(tmp_path, monkeypatch, student, embeddings) -> str:
    """Run sample.py on `student` (as if loaded from a bare student folder) with `embeddings` saved as the file
    (None: no file); returns the `error:` line, or '' when it sampled."""
    import ard_scale.checkpoint.export as export

    monkeypatch.setattr(export, "load_exported_student", lambda *a, **k: student)
    path = tmp_path / "emb.pt"
    if embeddings is not None:
        torch.save(embeddings, path)
    out = tmp_path / "samples"
    monkeypatch.setattr(sys, "argv", ["sample", str(tmp_path), "--prompts-embeddings", str(path), "--out", str(out)])
    try:
        runpy.run_path(str(ROOT / "launchers" / "sample.py"), run_name="__main__")
    except SystemExit as e:
        assert not out.exists()
        return str(e.code)
    assert (out / "grid.png").is_file()
    return ""


T, M = torch.randn(2, 8, 24), torch.ones(2, 8, dtype=torch.long)  # the debug teachers read 24-wide text


@pytest.mark.parametrize(
    ("family", "embeddings", "message"),
    [
        ("pixart", None, "error: cannot read --prompts-embeddings .*emb.pt: .*No such file"),
        ("pixart", {"txt": T}, r"a dict must hold 'text' and may hold 'text_mask' and 'pooled'; got \['txt'\]"),
        ("pixart", T[0], r"must be a float tensor \(prompts, tokens, 24\), got \(8, 24\) .*add a batch dimension"),
        ("pixart", torch.randn(2, 8, 32), r"must be a float tensor \(prompts, tokens, 24\), got \(2, 8, 32\)"),
        ("pixart", {"text": T, "text_mask": M[:1]}, r"'text_mask' must be \(2, 8\) beside .*; got \(1, 8\)"),
        ("pixart", {"text": T, "pooled": torch.randn(2, 16)}, "this pixart student reads no 'pooled'; leave it out"),
        ("flux", T, r"also reads a pooled text embedding: give a dict with 'text' and 'pooled' \(2, 16\)"),
        ("flux", {"text": T, "pooled": torch.randn(3, 16)}, r"'pooled' must be \(2, 16\) beside .*; got \(3, 16\)"),
        ("flux", {"text": T, "pooled": torch.randn(2, 12)}, r"'pooled' must be \(2, 16\) beside .*; got \(2, 12\)"),
    ],
)
def test_embeddings_it_cannot_use_are_one_error_line_naming_the_shape(
    family, embeddings, message, students, tmp_path, monkeypatch
):
    error = sample(tmp_path, monkeypatch, students[family], embeddings)
    assert error.startswith("error: ") and len(error.splitlines()) == 1
    assert re.search(message, error), error


@pytest.mark.parametrize(
    ("family", "embeddings"),
    [
        ("pixart", T.half()),
        ("pixart", {"text": T, "text_mask": M}),
        ("flux", {"text": T, "pooled": torch.randn(2, 16)}),
    ],
)
def test_embeddings_of_the_shapes_it_reads_sample(family, embeddings, students, tmp_path, monkeypatch):
    assert sample(tmp_path, monkeypatch, students[family], embeddings) == ""
