"""`generate_fn`s for the Evaluator: a sampler (the student's S-step `sample`, or the teacher's full sampler) driven
by global sample indices, so every image depends only on its index — never on the batch or the number of ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ard_scale.evaluation.evaluator import GenerateFn
from ard_scale.evaluation.grids import fixed_noise
from ard_scale.models.condition import Condition

# sample(noise (B, C, H, W), condition) -> final state (B, C, H, W) in [-1, 1] pixel space
Sample = Callable[[torch.Tensor, Condition], torch.Tensor]


def pixels_01(x_BCHW: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixel-space samples -> [0, 1] RGB (grey repeated to 3 channels)."""
    if x_BCHW.shape[1] not in (1, 3):
        raise ValueError(
            f"metrics need decoded pixels (1 or 3 channels), got {x_BCHW.shape[1]} channels: latent-space students "
            "need a VAE decode before evaluation"
        )
    x = (x_BCHW.float().clamp(-1, 1) + 1) / 2
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def class_conditional_generate_fn(
    sample: Sample, *, noise_shape: tuple[int, int, int], num_classes: int, seed: int = 0
) -> GenerateFn:
    """Sample i: class i mod num_classes, noise drawn from seed + i. Returns images in [0, 1] and no captions."""

    def generate(indices: torch.Tensor) -> tuple[torch.Tensor, None]:
        noise = torch.cat([fixed_noise(1, noise_shape, seed + int(i)) for i in indices])
        labels = indices.long() % num_classes
        return pixels_01(sample(noise, Condition(labels=labels))), None

    return generate
