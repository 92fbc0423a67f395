"""launchers/demo.py's demo.png: one column per class with its label, teacher and student rows in pairs on the same
noise with their network calls, tiles upscaled from the teacher's 8 px to 128 px with white gaps."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

LAUNCHER = Path(__file__).resolve().parents[2] / "launchers" / "demo.py"
TILE, GAP, TEXT = 128, 4, 14  # labelled_grid's defaults: tile side, gap, one line of text


def _demo():
    spec = importlib.util.spec_from_file_location("ard_demo_launcher", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_png_is_a_labelled_grid_of_classes_with_teacher_above_student():
    demo = _demo()
    n = 10 * demo.PER_CLASS
    labels = torch.arange(10).repeat_interleave(demo.PER_CLASS)
    # every tile says which sample it is: teacher tiles dark, student tiles light, brightness = the class
    teacher = (-1 + 0.05 * labels.float()).reshape(n, 1, 1, 1).expand(n, 1, 8, 8)
    student = (1 - 0.05 * labels.float()).reshape(n, 1, 1, 1).expand(n, 1, 8, 8)
    grid = demo.demo_grid(teacher, student, teacher_calls=24, student_calls=4, num_shown=3)

    row_h = TEXT + TILE + TEXT + GAP  # row label above, class label below each tile
    assert grid.shape == (6 * row_h + GAP, 10 * (TILE + GAP) + GAP, 3)
    for r in range(6):
        y = GAP + r * row_h + TEXT
        for c in range(10):
            x = GAP + c * (TILE + GAP)
            tile = grid[y : y + TILE, x : x + TILE]
            assert (tile == tile[0, 0]).all()  # one sample, upscaled
            expected = -1 + 0.05 * c if r % 2 == 0 else 1 - 0.05 * c  # even rows teacher, odd rows student
            assert abs(int(tile[0, 0, 0]) - round((expected + 1) * 127.5)) <= 1, (r, c)
            assert (grid[y : y + TILE, x + TILE : x + TILE + GAP] == 255).all()  # a white gap to the right
            caption = grid[y + TILE + 1 : y + TILE + TEXT, x : x + TILE]
            assert (caption < 128).any()  # the class label under the tile
        label = grid[GAP + r * row_h : GAP + r * row_h + TEXT, GAP : GAP + 10 * (TILE + GAP)]
        assert (label < 128).any()  # the row label ("teacher: 24 calls" / "student: 4 calls") above the row


def test_demo_grid_labels_say_the_calls_and_classes(monkeypatch):
    demo = _demo()
    seen = {}

    def fake_labelled_grid(rows, column_labels, row_labels):
        seen.update(rows=rows, columns=column_labels, row_labels=row_labels)
        return np.zeros((1, 1, 3), np.uint8)

    import ard_scale.evaluation.grids as grids

    monkeypatch.setattr(grids, "labelled_grid", fake_labelled_grid)
    x = torch.linspace(-1, 1, 10 * demo.PER_CLASS).reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    demo.demo_grid(x, -x, teacher_calls=24, student_calls=4, num_shown=2)
    assert seen["columns"] == [f"class {c}" for c in range(10)]
    assert seen["row_labels"] == ["teacher: 24 calls", "student: 4 calls"] * 2
    first = torch.arange(10) * demo.PER_CLASS  # sample 0 of each class
    np.testing.assert_array_equal(seen["rows"][0][:, 0, 0, 0], ((x[first, 0, 0, 0] + 1) * 127.5).round().numpy())
    np.testing.assert_array_equal(seen["rows"][1][:, 0, 0, 0], ((1 - x[first, 0, 0, 0]) * 127.5).round().numpy())
