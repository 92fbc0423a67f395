"""Noise seeds by stream: every noise draw in ard_scale seeds its generator with `noise_seed(stream, key, index)`.

The seed is one 64-bit number laid out as [stream: 2 bits | key: 22 bits | index: 40 bits], so two streams can never
share a seed whatever the run's seed or length: evaluation noise is never training noise, and the GAN's re-noising
never repeats either. The training stream keeps the layout trajectories always had (`train.seed·2**40 + position`),
so runs and their checkpoints draw the same noise as before.

    TRAIN   teacher trajectories, keyed on train.seed and the training position (trainer.trajectories.NoiseSeeds)
    EVAL    evaluation samples and the demo's comparison: key 0, index = sample number (the same for every run)
    GAN     the GAN stage's time and noise draws, keyed on train.seed and (step, rank)

Every draw from such a seed goes through `Draws`: torch's CPU generator (mt19937) keeps only a seed's low 32 bits
(`torch.Generator().manual_seed(2**62 + i)` draws what `manual_seed(i)` does), which would make every stream and every
train.seed draw the training noise of position 0, 1, 2, ... Seeds below 2**32 (train.seed 0's trajectories, user
seeds) still draw from torch's generator, the numbers diffusers' per-sample CPU generators give; larger seeds draw
from numpy's Philox keyed with the whole seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

import numpy as np
import torch

from ard_scale.errors import UserError


class Stream(IntEnum):
    TRAIN = 0
    EVAL = 1
    GAN = 2


KEY_BITS, INDEX_BITS = 22, 40
MAX_KEY, MAX_INDEX = 2**KEY_BITS - 1, 2**INDEX_BITS - 1  # train.seed's bound is MAX_KEY


def noise_seed(stream: Stream, key: int, index: int) -> int:
    """The torch seed of draw `index` of `stream` under `key` (a run's seed, or 0)."""
    if not 0 <= key <= MAX_KEY:
        raise UserError(f"noise key {key} outside [0, {MAX_KEY}] (train.seed must fit in {KEY_BITS} bits)")
    if not 0 <= index <= MAX_INDEX:
        raise UserError(f"noise index {index} outside [0, {MAX_INDEX}]")
    return (int(stream) << (KEY_BITS + INDEX_BITS)) | (key << INDEX_BITS) | index


def stream_of(seed: int) -> Stream:
    """The stream a seed made by noise_seed belongs to."""
    return Stream(seed >> (KEY_BITS + INDEX_BITS))


def eval_seeds(num: int, first: int = 0) -> list[int]:
    """Seeds of evaluation samples first .. first+num-1: the same for every run, disjoint from all training noise."""
    return [noise_seed(Stream.EVAL, 0, first + i) for i in range(num)]


TORCH_SEEDS = 2**32  # torch's CPU generator keys on a seed's low 32 bits only


class Draws:
    """The draws of one seed (0 <= seed < 2**64), in order, on the CPU: torch's generator below 2**32 (diffusers'
    numbers), numpy's Philox keyed with all 64 bits above (so seeds that differ only in their high bits differ)."""

    def __init__(self, seed: int):
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise UserError(f"noise seed {seed} outside [0, 2**64)")
        self.seed = seed
        self._torch = torch.Generator().manual_seed(seed) if seed < TORCH_SEEDS else None
        self._numpy = None if self._torch is not None else np.random.Generator(np.random.Philox(key=seed))

    def normal(self, shape: Sequence[int]) -> torch.Tensor:
        """float32 N(0, 1) of `shape`."""
        if self._torch is not None:
            return torch.randn(tuple(shape), generator=self._torch)
        return torch.from_numpy(self._numpy.standard_normal(tuple(shape), dtype=np.float32))

    def uniform(self, shape: Sequence[int]) -> torch.Tensor:
        """float64 U[0, 1) of `shape`."""
        if self._torch is not None:
            return torch.rand(tuple(shape), generator=self._torch, dtype=torch.float64)
        return torch.from_numpy(self._numpy.random(tuple(shape)))
