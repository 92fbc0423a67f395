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
