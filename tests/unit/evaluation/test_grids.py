"""Sample grids: teacher row above student row, same noise for both, fixed noise reproducible, PNG written."""

import numpy as np
import pytest
import torch
from PIL import Image

from ard_scale.evaluation.grids import comparison_grid, fixed_noise, write_teacher_student_grid


def test_teacher_and_student_see_the_same_noise_and_fill_their_rows(tmp_path):
    noise = fixed_noise(3, (1, 4, 5), seed=7)
    torch.testing.assert_close(noise, fixed_noise(3, (1, 4, 5), seed=7))
    torch.testing.assert_close(noise[1:], fixed_noise(2, (1, 4, 5), seed=8))  # sample i keyed on seed + i
    seen = []

    def teacher(x):
        seen.append(x.clone())
        return torch.full_like(x, -1.0)  # black

    def student(x):
        seen.append(x.clone())
        return torch.full_like(x, 1.0)  # white

    grid = write_teacher_student_grid(tmp_path / "grids" / "step_00000010.png", teacher, student, noise)
    torch.testing.assert_close(seen[0], seen[1])
    torch.testing.assert_close(seen[0], noise)
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2, 3)
    assert (grid[2:6, 2:7] == 0).all() and (grid[8:12, 2:7] == 255).all()  # teacher row 0, student row 1
    with Image.open(tmp_path / "grids" / "step_00000010.png") as img:
        np.testing.assert_array_equal(np.asarray(img), grid)


def test_latent_channels_are_refused():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        comparison_grid([torch.zeros(2, 4, 8, 8)])


def test_the_labelled_grid_upscales_spaces_and_labels_its_tiles():
    from ard_scale.evaluation.grids import labelled_grid

    black, white = np.zeros((3, 8, 8, 3), np.uint8), np.full((3, 8, 8, 3), 255, np.uint8)
    plain = labelled_grid([black, white], tile=64, gap=4)
    assert plain.shape == (2 * (64 + 4) + 4, 3 * (64 + 4) + 4, 3)  # 8 px tiles upscaled 8x, 4 px gaps
    assert (plain[4:68, 4:68] == 0).all() and (plain[4:68, 68:72] == 255).all()  # a tile, then a white gap
    columns, rows = ["a one", "a two", "a three"], ["teacher: 24 calls", "student: 4 calls"]
    labelled = labelled_grid([black, white], columns, rows, tile=64)
    assert labelled.shape == (2 * (14 + 64 + 14 + 4) + 4, plain.shape[1], 3)
    assert (labelled[4 + 14 : 4 + 14 + 64, 4:68] == 0).all()  # the row label's line sits above the tile
    caption = labelled[4 + 14 + 64 + 1 : 4 + 14 + 64 + 14, 4:68]
    assert (caption < 128).any() and not (caption < 128).all()  # dark text on white under the tile
    with pytest.raises(ValueError, match="differ in shape"):
        labelled_grid([black, white[:2]])
