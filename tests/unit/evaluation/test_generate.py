"""generate_fn: an image depends only on its global index (so metrics do not depend on how samples are split across
ranks); the student's real `sample` runs through it; latent outputs are refused."""

import pytest
import torch

from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.evaluation.generate import class_conditional_generate_fn, pixels_01
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher


def test_images_depend_only_on_their_index():
    def sample(noise, cond):
        return torch.tanh(noise + cond.labels.view(-1, 1, 1, 1).float())

    gen = class_conditional_generate_fn(sample, noise_shape=(1, 4, 4), num_classes=3, seed=5)
    whole, captions = gen(torch.arange(6))
    part, _ = gen(torch.tensor([4, 2]))
    assert captions is None and whole.shape == (6, 3, 4, 4)
    torch.testing.assert_close(part, whole[[4, 2]])
    assert not torch.allclose(whole[0], whole[3])  # same class, different noise
    assert 0 <= whole.min() and whole.max() <= 1


def test_student_sample_runs_through_it():
    teacher = build_teacher("dit", "debug", in_channels=3, out_channels=3)
    student = ARDStudent(teacher, ARDConfig(num_steps=2, num_causal_layers=1), VPSchedule()).eval()
    side = teacher.sample_size
    gen = class_conditional_generate_fn(student.sample, noise_shape=(3, side, side), num_classes=teacher.num_classes)
    with torch.no_grad():
        a, _ = gen(torch.arange(3))
        b, _ = gen(torch.tensor([2]))
    assert a.shape == (3, 3, side, side)
    torch.testing.assert_close(b, a[2:], rtol=1e-4, atol=1e-4)  # batched matmul rounding only


def test_latents_are_refused():
    with pytest.raises(ValueError, match="VAE"):
        pixels_01(torch.zeros(1, 4, 2, 2))
