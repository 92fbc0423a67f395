"""The regression objective L_R (DESIGN.md §1 "Regression loss (R)") against an independent formulation: the weighted
mean over the S steps of the MSE between the student's predicted next state and the teacher's recorded next state."""

import pytest
import torch

from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import VPSchedule
from ard_scale.losses.regression import RegressionLoss
from ard_scale.models.student import ARDStudent
from ard_scale.models.teachers import build_teacher

S, B = 4, 2


def reference(pred, targets, weights):
    """Σ_s w_s · MSE_s / Σ_s w_s, each MSE over the batch and every latent element of step s, in float64."""
    mse = [((pred[:, s].double() - targets[:, s].double()) ** 2).mean() for s in range(pred.shape[1])]
    return sum(w * m for w, m in zip(weights, mse, strict=True)) / sum(weights), torch.stack(mse)


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 1.0]])
def test_loss_is_the_weighted_mean_of_the_per_step_mse(weights):
    g = torch.Generator().manual_seed(0)
    # steps of different error scales, so a dropped, reversed or unnormalised weight changes the number
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0]).view(1, S, 1, 1, 1)
    pred, targets = torch.randn(B, S, 4, 8, 8, generator=g) * scale, torch.randn(B, S, 4, 8, 8, generator=g)
    loss, per_step = RegressionLoss(S, weights).from_predictions(pred, targets)
    want, want_per_step = reference(pred, targets, [1.0] * S if weights is None else weights)
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(per_step.double(), want_per_step, rtol=1e-6, atol=0)
    assert not per_step.requires_grad


def test_the_student_predicts_each_next_state_from_the_trajectory_up_to_it():
    """Teacher forcing: the inputs are x_τS … x_τ1 (the whole history, in order), the targets x_τ(S-1) … x_τ0."""
    teacher = build_teacher("dit", "debug", seed=1)
    student = ARDStudent(teacher, ARDConfig(num_steps=S, num_causal_layers=2), VPSchedule()).eval()
    cond = Condition(labels=torch.tensor([1, 7]))
    traj = torch.randn(B, S + 1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    weights = [1.0, 2.0, 3.0, 4.0]
    with torch.no_grad():
        loss, per_step = RegressionLoss(S, weights)(student, traj, cond)
        out = student(traj[:, :S], cond)  # one forward over the whole history x_τS … x_τ1
        pred = torch.stack([student.next_state(traj[:, s], out[:, s], s) for s in range(S)], 1)
    want, want_per_step = reference(pred, traj[:, 1:], weights)
    torch.testing.assert_close(loss.double(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(per_step.double(), want_per_step, rtol=1e-6, atol=0)


@pytest.mark.parametrize("weights", [[1.0, 2.0, 3.0], [1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
def test_bad_weights_are_a_clear_error(weights):
    with pytest.raises(ValueError, match="loss weights must be 4 non-negative numbers with a positive sum"):
        RegressionLoss(S, weights)
