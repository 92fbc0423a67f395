"""Noise streams: training, evaluation and GAN noise can never share a seed, whatever train.seed and run length."""

from __future__ import annotations

import pytest
import torch

from ard_scale.config import ConfigError, load_config
from ard_scale.diffusion.trajectory import draw_noise
from ard_scale.evaluation.grids import fixed_noise
from ard_scale.trainer.gan import GANNoise
from ard_scale.trainer.trajectories import NoiseSeeds
from ard_scale.utils.noise import MAX_INDEX, MAX_KEY, TORCH_SEEDS, Draws, Stream, eval_seeds, noise_seed, stream_of


def test_training_seeds_keep_their_layout():
    """Checkpointed runs resume onto the same noise: the training stream is still train.seed·2**40 + position."""
    seeds = NoiseSeeds(seed=3, rank=1, world_size=2, grad_accum=2, batch_size=4)
    first = ((5 * 2 + 1) * 2 + 1) * 4  # step 5, rank 1, micro 1, batch 4
    assert seeds(5, 4, micro=1) == [3 * 2**40 + first + i for i in range(4)]


def test_a_short_micro_batch_draws_no_other_samples_noise():
    """A micro-batch short of data.batch_size (corrupt MDS samples skipped, the last batch of finite data or of a
    bucket) takes the first seeds of its own position. Numbered by its own size, rank 1's 3-sample batch at step 1
    drew seeds 9-11: rank 0's noise of the same step."""
    world, accum, batch = 2, 2, 4
    seeds = {r: NoiseSeeds(seed=5, rank=r, world_size=world, grad_accum=accum, batch_size=batch) for r in range(world)}
    full = {(s, r, m): seeds[r](s, batch, m) for s in range(3) for r in range(world) for m in range(accum)}
    everyone = [x for position in full.values() for x in position]
    assert len(set(everyone)) == len(everyone)
    for n in (1, 3):
        short = seeds[1](1, n, micro=1)
        assert short == full[(1, 1, 1)][:n]  # its own position's first seeds
        others = {x for position, xs in full.items() if position != (1, 1, 1) for x in xs}
        assert not set(short) & others
    assert not set(seeds[1](1, 3)) & set(full[(1, 0, 0)] + full[(1, 0, 1)])  # no rank draws another's noise


@pytest.mark.parametrize("seed", [0, 1, MAX_KEY])
def test_streams_are_disjoint_at_the_extremes(seed):
    last_step = (MAX_INDEX + 1) // (8 * 2 * 16) - 1  # the last step a 8-rank, grad_accum 2, batch 16 run can index
    train = NoiseSeeds(seed=seed, rank=7, world_size=8, grad_accum=2, batch_size=16)
    train_seeds = train(0, 16) + train(last_step, 16, micro=1)
    assert max(train_seeds) <= noise_seed(Stream.TRAIN, MAX_KEY, MAX_INDEX) < min(eval_seeds(100))
    assert {stream_of(s) for s in train_seeds} == {Stream.TRAIN}
    assert {stream_of(s) for s in eval_seeds(80)} == {Stream.EVAL}
    first_80 = NoiseSeeds(seed=seed, rank=0, world_size=8, grad_accum=2, batch_size=80)(0, 80)
    assert not set(eval_seeds(80)) & set(first_80)  # the demo's 80 samples vs the first training batch
    with pytest.raises(ValueError, match="noise index"):
        train(last_step + 1, 16, micro=1)


def test_out_of_range_keys_are_refused():
    with pytest.raises(ValueError, match="train.seed must fit in 22 bits"):
        noise_seed(Stream.TRAIN, MAX_KEY + 1, 0)
    with pytest.raises(ConfigError, match="train.seed"):
        load_config("recipes/tiny_cpu.yaml", [f"train.seed={MAX_KEY + 1}"])
    assert load_config("recipes/tiny_cpu.yaml", [f"train.seed={MAX_KEY}"]).train.seed == MAX_KEY


def test_gan_draws_are_their_own_stream():
    """Keyed on (seed, step, rank): ranks and steps differ, and the draw is not the trajectory noise of the
    same numbers."""
    shape = (2, 1, 4, 4)
    a, b, c = (GANNoise.draw(0, step, rank, shape, 1.0, "cpu") for step, rank in [(3, 0), (3, 1), (4, 0)])
    assert not torch.equal(a.noise_fake, b.noise_fake) and not torch.equal(a.noise_fake, c.noise_fake)
    assert torch.equal(a.noise_fake, GANNoise.draw(0, 3, 0, shape, 1.0, "cpu").noise_fake)
    g = Draws(noise_seed(Stream.GAN, 0, 3 << 16))
    g.uniform((2,))
    assert torch.equal(a.noise_fake, g.normal(shape))
    assert not torch.equal(a.noise_fake, GANNoise.draw(1, 3, 0, shape, 1.0, "cpu").noise_fake)  # the run's seed counts
    with pytest.raises(ValueError, match="ranks"):
        GANNoise.draw(0, 0, 2**16, shape, 1.0, "cpu")


def test_the_noise_itself_differs_not_only_the_seeds():
    """torch's CPU generator keys on a seed's low 32 bits: with it, evaluation sample i, and position i of a run with
    any train.seed, drew the noise of train.seed 0's position i. Every bit of a seed must count."""
    shape = (1, 4, 4)
    train_0 = draw_noise(NoiseSeeds(seed=0, rank=0, world_size=1, grad_accum=1, batch_size=4)(0, 4), shape)
    train_1 = draw_noise(NoiseSeeds(seed=1, rank=0, world_size=1, grad_accum=1, batch_size=4)(0, 4), shape)
    evaluation = draw_noise(eval_seeds(4), shape)
    assert torch.equal(fixed_noise(4, shape, eval_seeds(1)[0]), evaluation)  # the in-loop evaluation's noise
    for a, b in [(train_0, train_1), (train_0, evaluation), (train_1, evaluation)]:
        assert not torch.isclose(a, b).any()
    # seeds below 2**32 keep torch's numbers: diffusers' per-sample CPU generators draw the same noise
    seeds = [0, 7, TORCH_SEEDS - 1]
    expected = torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(s)) for s in seeds])
    assert torch.equal(draw_noise(seeds, shape), expected)
    assert not torch.equal(Draws(TORCH_SEEDS).normal(shape), Draws(0).normal(shape))
    assert torch.equal(Draws(2**64 - 1).normal(shape), Draws(2**64 - 1).normal(shape))  # deterministic
    with pytest.raises(ValueError, match="outside"):
        Draws(2**64)
