"""Noise streams: training, evaluation and GAN noise can never share a seed, whatever train.seed and run length."""

from __future__ import annotations

import pytest
import torch

from ard_scale.config import ConfigError, load_config
from ard_scale.trainer.gan import GANNoise
from ard_scale.trainer.trajectories import NoiseSeeds
from ard_scale.utils.noise import MAX_INDEX, MAX_KEY, Stream, eval_seeds, noise_seed, stream_of


def test_training_seeds_keep_their_layout():
    """Checkpointed runs resume onto the same noise: the training stream is still train.seed·2**40 + position."""
    seeds = NoiseSeeds(seed=3, rank=1, world_size=2, grad_accum=2)
    first = ((5 * 2 + 1) * 2 + 1) * 4  # step 5, rank 1, micro 1, batch 4
    assert seeds(5, 4, micro=1) == [3 * 2**40 + first + i for i in range(4)]


@pytest.mark.parametrize("seed", [0, 1, MAX_KEY])
def test_streams_are_disjoint_at_the_extremes(seed):
    last_step = (MAX_INDEX + 1) // (8 * 2 * 16) - 1  # the last step a 8-rank, grad_accum 2, batch 16 run can index
    train = NoiseSeeds(seed=seed, rank=7, world_size=8, grad_accum=2)
    train_seeds = train(0, 16) + train(last_step, 16, micro=1)
    assert max(train_seeds) <= noise_seed(Stream.TRAIN, MAX_KEY, MAX_INDEX) < min(eval_seeds(100))
    assert {stream_of(s) for s in train_seeds} == {Stream.TRAIN}
    assert {stream_of(s) for s in eval_seeds(80)} == {Stream.EVAL}
    assert not set(eval_seeds(80)) & set(train(0, 80))  # the demo's 80 samples vs the first training batch
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
    key = noise_seed(Stream.GAN, 0, 3 << 16)
    g = torch.Generator().manual_seed(key)
    torch.rand(2, generator=g, dtype=torch.float64)
    assert torch.equal(a.noise_fake, torch.randn(shape, generator=g))
    with pytest.raises(ValueError, match="ranks"):
        GANNoise.draw(0, 0, 2**16, shape, 1.0, "cpu")
