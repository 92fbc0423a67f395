"""Schedule conversions: to_x0_eps inverts the forward process; grids; the first-order step."""

import pytest
import torch

from ard_scale.diffusion.schedules import CLEAN_T, FlowSchedule, VPSchedule, first_order_step
from ard_scale.diffusion.trajectory import uniform_teacher_grid

SCHEDULES = [VPSchedule(), VPSchedule(prediction_type="v_prediction"), FlowSchedule(), FlowSchedule(shift=3.0)]


def _native_target(schedule, x0, eps, t):
    """What a perfect network outputs: ε, v = α·ε − σ·x0, or the flow velocity ε − x0."""
    alpha, sigma = (v.float().reshape(-1, 1, 1, 1) for v in schedule.alpha_sigma(t))
    if schedule.prediction_type == "epsilon":
        return eps
    if schedule.prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    return eps - x0


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{type(s).__name__}-{s.prediction_type}")
def test_to_x0_eps_inverts_forward_process(schedule):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    t = torch.tensor([0.9, 0.5, 0.25, 0.1, 0.02], dtype=torch.float64) * schedule.t_max
    alpha, sigma = (v.float().reshape(-1, 1, 1, 1) for v in schedule.alpha_sigma(t))
    x_t = alpha * x0 + sigma * eps
    x0_hat, eps_hat = schedule.to_x0_eps(x_t, t, _native_target(schedule, x0, eps, t))
    torch.testing.assert_close(x0_hat, x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-4, atol=1e-4)


def test_vp_alpha_sigma_matches_ddpm_table_and_clean_end():
    s = VPSchedule()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    alpha, sigma = s.alpha_sigma(torch.tensor([0.0, 500.0, 999.0, CLEAN_T], dtype=torch.float64))
    torch.testing.assert_close(alpha[:3] ** 2, alpha_bar[[0, 500, 999]])
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(4, dtype=torch.float64))
    assert alpha[3] == 1 and sigma[3] == 0
    # fractional time interpolates log ᾱ: strictly between its integer neighbours
    a_frac, _ = s.alpha_sigma(torch.tensor(749.25, dtype=torch.float64))
    assert alpha_bar[750] < a_frac**2 < alpha_bar[749]
    # … linearly in log ᾱ (the student grid's 749.25, 499.5, 249.75 sit between table entries), not in ᾱ
    for t in (749.25, 499.5, 249.75):
        lo, frac = int(t), t - int(t)
        a_t, _ = s.alpha_sigma(torch.tensor(t, dtype=torch.float64))
        want = (1 - frac) * alpha_bar[lo].log() + frac * alpha_bar[lo + 1].log()
        torch.testing.assert_close(2 * a_t.log(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("schedule", [VPSchedule(), FlowSchedule(shift=3.0)], ids=["vp", "flow"])
def test_teacher_grid_contains_student_grid_exactly(schedule):
    student = schedule.grid(4)
    teacher = uniform_teacher_grid(schedule, 4, 6)
    assert len(teacher) == 25
    assert torch.equal(teacher[::6], student)  # bit-exact, not the nearest step
    assert torch.all(teacher[1:] < teacher[:-1])


def test_student_grid_values():
    torch.testing.assert_close(
        VPSchedule().grid(4), torch.tensor([999, 749.25, 499.5, 249.75, CLEAN_T], dtype=torch.float64)
    )
    torch.testing.assert_close(FlowSchedule().grid(4), torch.tensor([1, 0.75, 0.5, 0.25, 0], dtype=torch.float64))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{type(s).__name__}-{s.prediction_type}")
def test_first_order_step_is_exact_for_a_perfect_point_mass_denoiser(schedule):
    # x0 known exactly: the PF-ODE keeps ε fixed, so one step lands on α'·x0 + σ'·ε.
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    t, t_next = 0.8 * schedule.t_max, 0.3 * schedule.t_max
    a, s = (float(v) for v in schedule.alpha_sigma(torch.tensor(t)))
    a2, s2 = (float(v) for v in schedule.alpha_sigma(torch.tensor(t_next)))
    x_next = first_order_step(
        schedule, a * x0 + s * eps, t, _native_target(schedule, x0, eps, torch.tensor([t] * 2)), t_next
    )
    torch.testing.assert_close(x_next, a2 * x0 + s2 * eps, rtol=1e-4, atol=1e-4)


def test_bad_prediction_types():
    with pytest.raises(ValueError, match="'epsilon' or 'v_prediction'"):
        VPSchedule(prediction_type="sample")
    with pytest.raises(ValueError, match="'flow'"):
        FlowSchedule(prediction_type="epsilon")
    with pytest.raises(ValueError, match="shift"):
        FlowSchedule(shift=0.0)
