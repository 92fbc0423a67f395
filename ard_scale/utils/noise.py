"""Noise seeds by stream: every noise draw in ard_scale seeds its generator with `noise_seed(stream, key, index)`.

The seed is one 64-bit number laid out as [stream: 2 bits | key: 22 bits | index: 40 bits], so two streams can never
share a seed whatever the run's seed or length: evaluation noise is never training noise, and the GAN's re-noising
never repeats either. The training stream keeps the layout trajectories always had (`train.seed·2**40 + position`),
so runs and their checkpoints draw the same noise as before.

    TRAIN   teacher trajectories, keyed on train.seed and the training position (trainer.trajectories.NoiseSeeds)
    EVAL    evaluation samples and the demo's comparison: key 0, index = sample number (the same for every run)
    GAN     the GAN stage's time and noise draws, keyed on train.seed and (step, rank)
"""

from __future__ import annotations

from enum import IntEnum


class Stream(IntEnum):
    TRAIN = 0
    EVAL = 1
    GAN = 2


KEY_BITS, INDEX_BITS = 22, 40
MAX_KEY, MAX_INDEX = 2**KEY_BITS - 1, 2**INDEX_BITS - 1  # train.seed's bound is MAX_KEY


def noise_seed(stream: Stream, key: int, index: int) -> int:
    """The torch seed of draw `index` of `stream` under `key` (a run's seed, or 0)."""
    if not 0 <= key <= MAX_KEY:
        raise ValueError(f"noise key {key} outside [0, {MAX_KEY}] (train.seed must fit in {KEY_BITS} bits)")
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"noise index {index} outside [0, {MAX_INDEX}]")
    return (int(stream) << (KEY_BITS + INDEX_BITS)) | (key << INDEX_BITS) | index


def stream_of(seed: int) -> Stream:
    """The stream a seed made by noise_seed belongs to."""
    return Stream(seed >> (KEY_BITS + INDEX_BITS))


def eval_seeds(num: int, first: int = 0) -> list[int]:
    """Seeds of evaluation samples first .. first+num-1: the same for every run, disjoint from all training noise."""
    return [noise_seed(Stream.EVAL, 0, first + i) for i in range(num)]
