"""The GAN stage's real images are judged under their own condition, also when the trajectory is replayed from an
earlier batch (train.trajectory_source: replay): one process, the tiny recipe's real teacher, conditioner, replay
source and discriminator."""

import torch

from ard_scale.config import load_config
from ard_scale.diffusion.schedules import add_noise
from ard_scale.models.discriminator import Discriminator
from ard_scale.trainer.build import build_conditioner, build_schedule, build_teacher_model, latent_shape
from ard_scale.trainer.gan import GANNoise, discriminator_step_loss, real_condition
from ard_scale.trainer.trajectories import NoiseSeeds, build_trajectory_source


def test_reals_of_a_replayed_step_are_judged_under_their_own_labels():
    cfg = load_config("recipes/tiny_cpu.yaml", ["train.trajectory_source=replay", "train.replay_times=2"])
    teacher, schedule = build_teacher_model(cfg), build_schedule(cfg)
    conditioner = build_conditioner(cfg, teacher)
    shape = latent_shape(cfg, teacher)
    source = build_trajectory_source(
        "replay", teacher, schedule, conditioner, replay_times=2, seeds=NoiseSeeds(0, 0, 1, 1, 2), latent_shape=shape,
        num_student_steps=cfg.student.num_steps, diffusion=cfg.diffusion, guide=teacher.spec.guide,
    )  # fmt: skip
    first, second = {"labels": torch.tensor([1, 2])}, {"labels": torch.tensor([7, 8])}
    _, cond = source(first, 0)
    assert torch.equal(real_condition(source, conditioner, first, cond).labels, first["labels"])
    states, cond = source(second, 1)  # the cycle's second step: the first batch's trajectory and labels
    assert torch.equal(cond.labels, first["labels"])
    real_cond = real_condition(source, conditioner, second, cond)
    assert torch.equal(real_cond.labels, second["labels"])

    # the discriminator's real logits are those of the reals under their own labels (eval mode: spectral norm's
    # estimate stays put, so the logits can be recomputed exactly)
    torch.manual_seed(0)
    disc = Discriminator.for_teacher(teacher, num_heads=1, hidden=16).eval()
    features = lambda x, t, c: teacher.features(x, schedule.model_time(t), c, [1])  # noqa: E731
    fake, real = states[:, -1], torch.randn_like(states[:, -1])
    noise = GANNoise.draw(0, 1, 0, tuple(real.shape), schedule.t_max, "cpu")
    _, real_logits, fake_logits = discriminator_step_loss(
        features, disc, schedule, fake, real, cond, noise, cfg.gan, real_cond
    )
    with torch.no_grad():
        x_real = add_noise(schedule, real, noise.t_real, noise.noise_real)
        x_fake = add_noise(schedule, fake, noise.t_fake, noise.noise_fake)
        own = disc(features(x_real, noise.t_real, real_cond), real_cond)
        other = disc(features(x_real, noise.t_real, cond), cond)
        assert torch.equal(fake_logits, disc(features(x_fake, noise.t_fake, cond), cond))
    assert not torch.allclose(own, other)  # the labels matter to the heads: the check below can tell them apart
    assert torch.equal(real_logits, own)
