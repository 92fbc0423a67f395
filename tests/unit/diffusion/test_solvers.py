"""ODE solvers on an analytically known denoiser, DPM-Solver++(2M) and DDIM vs diffusers' schedulers, CFG."""

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, HeunDiscreteScheduler
from diffusion_analytic import GaussianDenoiser

from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule
from ard_scale.diffusion.solvers import SOLVERS, guided_model, solve
from ard_scale.diffusion.trajectory import diffusers_grid

SCHEDULES = {
    "vp-eps": VPSchedule(),
    "vp-v": VPSchedule(prediction_type="v_prediction"),
    "flow-shift3": FlowSchedule(shift=3.0),
}


def _run(schedule, denoiser, solver, num_steps, x_T, null=None):
    model = guided_model(denoiser, null) if null is not None else (lambda x, t: denoiser(x, t)[:, : x.shape[1]])
    return solve(model, schedule, x_T, schedule.grid(num_steps), solver)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_point_mass_data_is_solved_exactly_in_one_step_per_interval(name, solver):
    schedule = SCHEDULES[name]
    den = GaussianDenoiser(schedule, std=0.0)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = _run(schedule, den, solver, 3, x_T)
    torch.testing.assert_close(out, torch.full_like(out, den.mean), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_solvers_converge_and_second_order_beats_first_order(name):
    schedule = SCHEDULES[name]
    den = GaussianDenoiser(schedule, extra_channels=3)  # junk learned-sigma channels must be ignored
    x_T = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = den.exact_solution(x_T, schedule.grid(1)[0])
    errs = {s: _rel(_run(schedule, den, s, 32, x_T), exact) for s in SOLVERS}
    assert errs["ddim"] == errs["euler"]  # the same first-order update
    assert errs["heun"] < errs["ddim"] / 3, errs
    assert errs["dpm++2m"] < errs["ddim"] / 3, errs
    # first-order convergence of the DDIM/Euler step: 8x the steps, ~8x smaller error
    assert _rel(_run(schedule, den, "ddim", 256, x_T), exact) < errs["ddim"] / 6


def _diffusers_loop(scheduler, den, x):
    states = [x]
    for t in scheduler.timesteps:
        out = den(x, t.float().expand(x.shape[0]))
        x = scheduler.step(out, t, x, return_dict=False)[0]
        states.append(x)
    return torch.stack(states, 1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("kind", ["dpm++2m", "ddim"])
def test_matches_diffusers_scheduler_step_by_step(kind, prediction_type):
    if kind == "dpm++2m":
        sched = DPMSolverMultistepScheduler(prediction_type=prediction_type)
    else:
        sched = DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    sched.set_timesteps(10)
    schedule = VPSchedule(prediction_type=prediction_type)
    den = GaussianDenoiser(schedule)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = _diffusers_loop(sched, den, x_T)
    grid = [*sched.timesteps.tolist(), -1.0]
    ours = []
    solve(lambda x, t: den(x, t), schedule, x_T, grid, kind, on_state=lambda i, x: ours.append(x.clone()))
    ours = torch.stack(ours, 1)
    for i in range(ref.shape[1]):
        assert _rel(ours[:, i], ref[:, i]) < 1e-5, i
    # and a different solver on the same grid does not match (the comparison can fail)
    other = solve(lambda x, t: den(x, t), schedule, x_T, grid, "heun")
    assert _rel(other, ref[:, -1]) > 1e-3


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_heun_matches_diffusers_heun_scheduler(prediction_type):
    # diffusers' Heun integrates the VP ODE in y = x/α ("Karras" scaling), Euler onto σ = 0: the same method as ours.
    sched = HeunDiscreteScheduler(
        beta_start=1e-4, beta_end=0.02, prediction_type=prediction_type, timestep_spacing="leading"
    )
    sched.set_timesteps(8)
    schedule = VPSchedule(prediction_type=prediction_type)
    den = GaussianDenoiser(schedule)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sample = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        out = den(sched.scale_model_input(sample, t), t.float().expand(2))
        sample = sched.step(out, t, sample, return_dict=False)[0]
    grid = [*torch.unique_consecutive(sched.timesteps).tolist(), -1.0]
    ours = solve(lambda x, t: den(x, t), schedule, noise, grid, "heun")
    assert _rel(ours, sample) < 1e-5
    assert _rel(solve(lambda x, t: den(x, t), schedule, noise, grid, "ddim"), sample) > 1e-3  # can fail


def test_flow_euler_matches_diffusers_flow_match_euler_scheduler():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    schedule, grid, solver = diffusers_grid(sched)
    assert solver == "euler" and schedule.shift == 3.0
    den = GaussianDenoiser(schedule)
    x = noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for t in sched.timesteps:  # SD3 feeds the model 1000·σ
        x = sched.step(den(x, t.expand(2)), t, x, return_dict=False)[0]
    ours = solve(lambda x, t: den(x, t), schedule, noise, grid, solver)
    assert _rel(ours, x) < 1e-5
    assert _rel(solve(lambda x, t: den(x, t), schedule, noise, grid, "heun"), x) > 1e-3  # can fail
    with pytest.raises(ValueError, match="stochastic_sampling=True"):
        diffusers_grid(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True))


@pytest.mark.parametrize("sigmas", ["diffusers", "ours"])
def test_dpm_solver_2m_on_flow_matches_diffusers_flow_sigmas(sigmas):
    # DPMSolverMultistepScheduler's flow sigmas start below 1; our grid starts at σ = 1, where α = 0 and λ = -inf
    sched = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    sched.set_timesteps(8)
    schedule = FlowSchedule(shift=3.0)
    if sigmas == "ours":
        sched.sigmas = schedule.grid(8).float()
    den = GaussianDenoiser(schedule)
    x = x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = [x]
    for i, t in enumerate(sched.timesteps):  # fed 1000·σ: the scheduler's integer timesteps round it
        x = sched.step(den(x, 1000 * sched.sigmas[i].expand(2)), t, x, return_dict=False)[0]
        ref.append(x)
    ours = []
    solve(lambda x, t: den(x, t), schedule, x_T, sched.sigmas.double(), "dpm++2m", on_state=lambda i, x: ours.append(x))
    for i in range(len(ref)):
        assert _rel(ours[i], ref[i]) < 1e-5, i
    assert _rel(solve(lambda x, t: den(x, t), schedule, x_T, sched.sigmas.double(), "ddim"), x) > 1e-3  # can fail


def test_cfg_is_one_batched_forward_with_the_guidance_formula():
    schedule = VPSchedule()
    den = GaussianDenoiser(schedule, label_shift=0.5)
    cond, null = Condition(labels=torch.tensor([1, 2])), Condition(labels=torch.tensor([0, 0]))
    model = guided_model(den, cond, null, 4.0)
    x, t = torch.randn(2, 3, 4, 4), torch.full((2,), 500.0)
    out = model(x, t)
    assert den.batch_sizes == [4]  # cond and uncond halves together
    out_c, out_u = den(x, t, cond), den(x, t, null)
    torch.testing.assert_close(out, out_u + 4.0 * (out_c - out_u))
    # DiT's original convention: only the first 3 channels are guided, the rest stay conditional
    x4 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    out3 = guided_model(den, cond, null, 4.0, guided_channels=3)(x4, t)
    c4, u4 = den(x4, t, cond), den(x4, t, null)
    torch.testing.assert_close(out3[:, :3], u4[:, :3] + 4.0 * (c4[:, :3] - u4[:, :3]))
    torch.testing.assert_close(out3[:, 3:], c4[:, 3:])
    # guidance 1: conditional half only
    den.batch_sizes.clear()
    torch.testing.assert_close(guided_model(den, cond, None, 1.0)(x, t), out_c)
    assert den.batch_sizes == [2]


def test_bad_inputs():
    schedule = VPSchedule()
    den = GaussianDenoiser(schedule)
    with pytest.raises(ValueError, match="unknown solver 'rk4'.*ddim"):
        solve(lambda x, t: den(x, t), schedule, torch.zeros(1, 1, 2, 2), schedule.grid(2), "rk4")
    with pytest.raises(ValueError, match="guidance_scale=1.5 needs a null condition"):
        guided_model(den, Condition(labels=torch.tensor([1])), None, 1.5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        solve(lambda x, t: den(x, t), schedule, torch.zeros(1, 1, 2, 2), [0.0, 500.0], "ddim")
