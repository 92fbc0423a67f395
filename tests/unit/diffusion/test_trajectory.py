"""Teacher trajectories on the student grid: recording, determinism per seed, the gather hook, bad inputs."""

import contextlib

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusion_analytic import GaussianDenoiser

from ard_scale.diffusion.condition import Condition
from ard_scale.diffusion.schedules import FlowSchedule, VPSchedule
from ard_scale.diffusion.trajectory import diffusers_grid, draw_noise, teacher_trajectory
from ard_scale.models.teachers import build_teacher


@pytest.mark.parametrize("schedule", [VPSchedule(), FlowSchedule(shift=3.0)], ids=["vp", "flow"])
def test_states_are_recorded_at_the_student_times(schedule):
    # Point-mass data: the exact PF-ODE state at time τ is α(τ)·m + σ(τ)·ε, and every solver reproduces it.
    den = GaussianDenoiser(schedule, std=0.0)
    cond = Condition(labels=torch.zeros(3, dtype=torch.long))
    tr = teacher_trajectory(
        den,
        schedule,
        cond,
        latent_shape=(2, 4, 4),
        seeds=[1, 2, 3],
        num_student_steps=4,
        substeps=3,
        solver="dpm++2m",
        record="x0",
    )
    assert tr.states.shape == (3, 5, 2, 4, 4) and tr.x0.shape == (3, 5, 2, 4, 4)
    torch.testing.assert_close(tr.times, schedule.grid(4))
    noise = draw_noise([1, 2, 3], (2, 4, 4))
    assert torch.equal(tr.states[:, 0], noise)
    a_T, s_T = (float(v) for v in schedule.alpha_sigma(tr.times[0]))
    eps = (noise - a_T * den.mean) / s_T  # the noise the start state implies (VP's x_T is not exactly pure noise)
    for s, t in enumerate(tr.times.tolist()):
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t)))
        torch.testing.assert_close(tr.states[:, s], alpha * den.mean + sigma * eps, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tr.x0[:, s], torch.full_like(noise, den.mean), rtol=1e-5, atol=1e-5)
    assert tr.seeds.tolist() == [1, 2, 3]


def test_x0_record_is_the_guided_teacher_prediction_at_each_student_time():
    schedule = VPSchedule()
    den = GaussianDenoiser(schedule, label_shift=0.5)
    cond, null = Condition(labels=torch.tensor([1, 3])), Condition(labels=torch.tensor([0, 0]))
    tr = teacher_trajectory(
        den,
        schedule,
        cond,
        null_cond=null,
        guidance_scale=2.0,
        latent_shape=(2, 4, 4),
        seeds=[4, 5],
        num_student_steps=2,
        substeps=4,
        record="x0",
    )
    for s, t in enumerate(tr.times[:-1].tolist()):
        x = tr.states[:, s]
        t_b = torch.full((2,), t)
        out = den(x, t_b, null) + 2.0 * (den(x, t_b, cond) - den(x, t_b, null))
        torch.testing.assert_close(tr.x0[:, s], schedule.to_x0_eps(x, t, out)[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(tr.x0[:, -1], tr.states[:, -1])
    # guidance moved the samples: the guided means are 0.3 + 0.5·label·2 - ... not the conditional ones
    plain = teacher_trajectory(
        den, schedule, cond, latent_shape=(2, 4, 4), seeds=[4, 5], num_student_steps=2, substeps=4
    )
    assert (plain.final - tr.final).abs().max() > 0.1


@pytest.fixture(scope="module")
def dit_teacher():
    t = build_teacher("dit", "debug", seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return t


def test_deterministic_per_seed_whatever_the_batch(dit_teacher):
    def run(seeds, labels):
        cond = Condition(labels=torch.tensor(labels))
        return teacher_trajectory(
            dit_teacher,
            VPSchedule(),
            cond,
            null_cond=dit_teacher.null_condition(len(seeds)),
            guidance_scale=1.5,
            latent_shape=(4, 8, 8),
            seeds=seeds,
            num_student_steps=2,
            substeps=2,
        )

    a = run([11, 22, 33], [1, 2, 3])
    b = run([33, 7], [3, 4])
    assert torch.equal(a.states[2, 0], b.states[0, 0])  # same noise, bit for bit
    # the rest equals up to the teacher kernels' batch-size-dependent rounding
    assert (a.states[2] - b.states[0]).norm() <= 1e-5 * b.states[0].norm()
    assert not torch.allclose(a.states[1], b.states[1])  # a different seed is a different trajectory
    c = run([11, 22, 33], [1, 2, 3])
    assert torch.equal(a.states, c.states)


def test_gather_hook_is_entered_once_around_every_teacher_call():
    schedule = VPSchedule()
    den = GaussianDenoiser(schedule)
    events = []

    @contextlib.contextmanager
    def gather():
        events.append("enter")
        yield
        events.append("exit")

    def denoise(x, t, cond):
        events.append("call")
        return den(x, t, cond)

    teacher_trajectory(
        denoise,
        schedule,
        Condition(labels=torch.zeros(2, dtype=torch.long)),
        latent_shape=(1, 2, 2),
        seeds=[0, 1],
        num_student_steps=2,
        substeps=3,
        solver="heun",
        gather=gather,
    )
    assert events[0] == "enter" and events[-1] == "exit" and events.count("enter") == 1
    assert events.count("call") == 2 * 6 - 1  # Heun: 2 evaluations per step, Euler onto the clean endpoint


def test_default_teacher_grid_is_six_substeps_per_student_step():
    """Without `substeps` or a grid the teacher takes K = 6 solver steps per student interval, as documented
    (diffusion.substeps' default): the same states as an explicit K = 6, which differ from K = 1's."""
    schedule = VPSchedule()
    den = GaussianDenoiser(schedule)
    calls = []

    def denoise(x, t, cond):
        calls.append(t[0].item())
        return den(x, t, cond)

    kw = dict(latent_shape=(2, 4, 4), seeds=[0, 1], num_student_steps=4)
    cond = Condition(labels=torch.zeros(2, dtype=torch.long))
    default = teacher_trajectory(denoise, schedule, cond, **kw)
    assert calls == [float(t) for t in schedule.grid(24)[:-1].float()]  # 4 × 6 DDIM steps on the uniform grid
    assert torch.equal(default.states, teacher_trajectory(den, schedule, cond, substeps=6, **kw).states)
    assert not torch.allclose(default.states, teacher_trajectory(den, schedule, cond, substeps=1, **kw).states)


def test_bad_inputs():
    schedule = VPSchedule()
    den = GaussianDenoiser(schedule)
    cond = Condition(labels=torch.zeros(2, dtype=torch.long))
    kw = dict(latent_shape=(1, 2, 2), seeds=[0, 1])
    with pytest.raises(ValueError, match="unknown solver 'plms'"):
        teacher_trajectory(den, schedule, cond, solver="plms", **kw)
    with pytest.raises(ValueError, match="guidance_scale=3.0 needs a null condition"):
        teacher_trajectory(den, schedule, cond, guidance_scale=3.0, **kw)
    # a diffusers 'leading' grid (…, 83, 0) does not contain the student times 999, 749.25, …
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(12)
    _, grid, _ = diffusers_grid(sched)
    with pytest.raises(ValueError, match="does not contain student time 999.0"):
        teacher_trajectory(den, schedule, cond, teacher_grid=grid, **kw)
    with pytest.raises(ValueError, match="must both be >= 1"):
        teacher_trajectory(den, schedule, cond, substeps=0, **kw)
    with pytest.raises(ValueError, match="either `substeps`"):
        teacher_trajectory(den, schedule, cond, substeps=2, teacher_grid=schedule.grid(8), **kw)
    with pytest.raises(ValueError, match="exactly one of `seeds`"):
        teacher_trajectory(den, schedule, cond, latent_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="unknown record"):
        teacher_trajectory(den, schedule, cond, record="eps", **kw)
    with pytest.raises(ValueError, match="3 seeds/noise samples but a condition batch of 2"):
        teacher_trajectory(den, schedule, cond, latent_shape=(1, 2, 2), seeds=[0, 1, 2])


@pytest.mark.parametrize(
    "scheduler, match",
    [
        (DDIMScheduler(), "clip_sample=True"),
        (DDIMScheduler(clip_sample=False, timestep_spacing="trailing"), "timestep_spacing='trailing'"),
        (DPMSolverMultistepScheduler(use_karras_sigmas=True), "use_karras_sigmas=True"),
        (DPMSolverMultistepScheduler(solver_order=3), "solver_order=3"),
        (DDIMScheduler(clip_sample=False, prediction_type="sample"), "prediction_type='sample'"),
        # zero terminal SNR rescales the betas' ᾱ table, which VPSchedule (plain linear betas) does not reproduce
        (DDIMScheduler(clip_sample=False, rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True"),
        (DPMSolverMultistepScheduler(rescale_betas_zero_snr=True), "rescale_betas_zero_snr=True"),
    ],
)
def test_diffusers_grid_refuses_what_it_cannot_reproduce(scheduler, match):
    scheduler.set_timesteps(12)  # 1000/12 is not an integer: 'trailing' DDIM steps miss the listed timesteps
    with pytest.raises(ValueError, match=match):
        diffusers_grid(scheduler)
