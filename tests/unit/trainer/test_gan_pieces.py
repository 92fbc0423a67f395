"""The GAN step's pieces on one process against the quantities they stand for, written out here from their
definitions (DESIGN.md §1 "GAN fine-tuning (R+G)"): the generator's gradient at x̂0, the adaptive weight's two
gradient norms at the student's output activation, the discriminator loss with the approximate R1 penalty, and the
divergence watchdog. The tiny recipe's real teacher, student and heads."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ard_scale.config import load_config
from ard_scale.diffusion.condition import Condition
from ard_scale.losses.regression import RegressionLoss
from ard_scale.models.discriminator import Discriminator
from ard_scale.models.student import ARDStudent
from ard_scale.trainer.build import build_schedule, build_teacher_model, latent_shape
from ard_scale.trainer.gan import (
    DivergenceWatch,
    GANNoise,
    discriminator_step_loss,
    gan_weight_sq_norms,
    generator_gradient,
)

LAYERS = [1, 3]


@pytest.fixture(scope="module")
def parts():
    cfg = load_config("recipes/tiny_cpu.yaml")
    torch.manual_seed(0)
    teacher, schedule = build_teacher_model(cfg), build_schedule(cfg)
    student = ARDStudent(teacher, cfg.student, schedule)
    disc = Discriminator.for_teacher(teacher, num_heads=len(LAYERS), hidden=16).eval().requires_grad_(False)
    shape = latent_shape(cfg, teacher)
    S, B = cfg.student.num_steps, 2
    g = torch.Generator().manual_seed(1)
    states = torch.randn(B, S + 1, *shape, generator=g)
    cond = Condition(labels=torch.tensor([3, 5]))
    noise = GANNoise.draw(0, 7, 0, (B, *shape), schedule.t_max, "cpu")
    assert not torch.allclose(noise.t_fake, noise.t_real)  # the checks below can tell the two times apart
    return cfg, teacher, schedule, student, disc, states, cond, noise


def alpha_sigma(schedule, t, x):
    alpha, sigma = schedule.alpha_sigma(t)
    return alpha.view(-1, 1, 1, 1).to(x), sigma.view(-1, 1, 1, 1).to(x)


def fake_logits_of(parts, x0):
    """D on x̂0 re-noised at the fakes' own time and noise: x_t = α(t_f)·x̂0 + σ(t_f)·ε_f (the forward process)."""
    _, teacher, schedule, _, disc, _, cond, noise = parts
    alpha, sigma = alpha_sigma(schedule, noise.t_fake, x0)
    x_t = alpha * x0 + sigma * noise.noise_fake
    return disc(teacher.features(x_t, schedule.model_time(noise.t_fake), cond, LAYERS), cond)


def test_generator_gradient_is_the_gradient_of_the_hinge_generator_loss_at_x0_hat(parts):
    cfg, teacher, schedule, _, disc, states, cond, noise = parts
    x0_hat = states[:, -1].clone()
    features = lambda x, t, c: teacher.features(x, schedule.model_time(t), c, LAYERS)  # noqa: E731
    loss_g, grad, logits = generator_gradient(features, disc, schedule, x0_hat, cond, noise, "hinge")

    leaf = x0_hat.clone().requires_grad_(True)
    expected_logits = fake_logits_of(parts, leaf)
    expected_loss = -expected_logits.mean()  # hinge: L_G = -E[D(x_f)]
    (expected_grad,) = torch.autograd.grad(expected_loss, leaf)
    torch.testing.assert_close(loss_g, expected_loss.detach())
    torch.testing.assert_close(logits, expected_logits.detach())
    torch.testing.assert_close(grad, expected_grad)


def test_adaptive_weight_norms_are_the_gradients_of_both_losses_at_the_students_output(parts):
    """‖∇_out L_R‖² and ‖∇_out L_G‖², where L_G's path runs out -> next states -> x̂0 (the *last* step's next state)
    -> re-noise -> backbone -> heads; here by plain autograd through the whole graph, no surrogate."""
    cfg, teacher, schedule, student, disc, states, cond, noise = parts
    loss_fn = RegressionLoss(cfg.student.num_steps)
    inputs, targets = states[:, :-1], states[:, 1:]
    features = lambda x, t, c: teacher.features(x, schedule.model_time(t), c, LAYERS)  # noqa: E731
    with torch.no_grad():
        out = student(inputs, cond)
    x0_hat = student.next_states(inputs, out)[:, -1]
    _, g, _ = generator_gradient(features, disc, schedule, x0_hat, cond, noise, "hinge")
    sq = gan_weight_sq_norms(student, loss_fn, inputs, targets, out, g)

    o = out.clone().requires_grad_(True)
    pred = student.next_states(inputs, o)
    loss_r = F.mse_loss(pred, targets, reduction="none").flatten(2).mean(2).mean()  # mean over steps of the MSE
    (grad_r,) = torch.autograd.grad(loss_r, o, retain_graph=True)
    (grad_g,) = torch.autograd.grad(-fake_logits_of(parts, pred[:, -1]).mean(), o)
    assert grad_g[:, -1].abs().sum() > 0  # L_G reaches the last step's output ...
    torch.testing.assert_close(sq, torch.stack([grad_r.pow(2).sum(), grad_g.pow(2).sum()]), rtol=1e-5, atol=0)


def test_discriminator_loss_with_r1_is_hinge_plus_the_penalty_on_the_reals_under_their_condition(parts):
    cfg, teacher, schedule, _, disc, states, cond, noise = parts
    gan = dataclasses.replace(cfg.gan, r1_weight=0.5, r1_sigma=0.05)
    real_cond = Condition(labels=torch.tensor([8, 1]))
    fake, real = states[:, -1], states[:, 0]
    features = lambda x, t, c: teacher.features(x, schedule.model_time(t), c, LAYERS)  # noqa: E731
    loss_d, real_logits, fake_logits = discriminator_step_loss(
        features, disc, schedule, fake, real, cond, noise, gan, real_cond
    )

    with torch.no_grad():
        alpha, sigma = alpha_sigma(schedule, noise.t_real, real)
        x_real = alpha * real + sigma * noise.noise_real
        d_real = disc(features(x_real, noise.t_real, real_cond), real_cond)
        d_fake = fake_logits_of(parts, fake)
        x_pert = x_real + 0.05 * noise.r1  # the reals moved by σ·ε with the stage's own R1 draw
        d_pert = disc(features(x_pert, noise.t_real, real_cond), real_cond)
    expected = (1 - d_real).clamp(min=0).mean() + (1 + d_fake).clamp(min=0).mean()
    expected = expected + 0.5 * (d_real - d_pert).pow(2).mean()
    torch.testing.assert_close(real_logits, d_real)
    torch.testing.assert_close(fake_logits, d_fake)
    torch.testing.assert_close(loss_d, expected)


def ema(values, smoothing=0.9):
    out = None
    for v in values:
        out = v if out is None else smoothing * out + (1 - smoothing) * v
    return out


def test_divergence_reference_is_the_smoothed_loss_at_the_first_gan_step_and_it_warns_once():
    watch = DivergenceWatch(factor=3.0)
    warmup, gan = [4.0, 2.0, 1.0], [1.0, 1.0]
    for step, loss in enumerate(warmup):  # warm-up: GAN weight 0, no reference yet
        assert watch.update(step, loss, 0.0) is None
    assert watch.reference is None
    assert watch.update(3, gan[0], 0.5) is None  # the first step with the GAN term on sets the reference
    assert watch.reference == pytest.approx(ema([*warmup, gan[0]]))
    assert watch.update(4, gan[1], 0.5) is None
    assert watch.smoothed == pytest.approx(ema([*warmup, *gan]))
    assert watch.update(5, float("nan"), 0.5) is None and watch.smoothed == pytest.approx(ema([*warmup, *gan]))

    # a loss that pushes the smoothed value past 3× the reference fires, exactly once
    reference, losses, step = watch.reference, [*warmup, *gan], 6
    while ema([*losses, 60.0]) <= 3 * reference:
        assert watch.update(step, 60.0, 0.5) is None, step
        losses.append(60.0)
        step += 1
    message = watch.update(step, 60.0, 0.5)
    assert message is not None and f"at step {step} " in message and watch.fired_at == step
    assert watch.update(step + 1, 600.0, 0.5) is None


def test_a_resumed_divergence_watch_keeps_its_reference_and_does_not_warn_again():
    watch = DivergenceWatch(factor=2.0)
    watch.update(0, 1.0, 0.5)
    before = DivergenceWatch(factor=2.0)
    before.load_state_dict(watch.state_dict())
    assert before.reference == 1.0  # resumed before firing: the same reference, not the next step's loss
    step = 1
    while watch.update(step, 100.0, 0.5) is None:
        assert before.update(step, 100.0, 0.5) is None
        step += 1
    assert before.update(step, 100.0, 0.5) is not None  # and it fires where the uninterrupted watch fired
    resumed = DivergenceWatch(factor=2.0)
    resumed.load_state_dict(watch.state_dict())
    assert resumed.fired_at == step
    assert resumed.update(step + 1, 1000.0, 0.5) is None  # already reported before the checkpoint
