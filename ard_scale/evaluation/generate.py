"""`generate_fn`s for the Evaluator: a sampler (the student's S-step `sample`, or the teacher's full sampler) driven
by global sample indices, so every image depends only on its index — never on the batch or the number of ranks.
Latent-space samples are decoded to pixels (the run's VAE) before any metric sees them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ard_scale.diffusion.condition import Condition
from ard_scale.errors import UserError
from ard_scale.evaluation.evaluator import GenerateFn
from ard_scale.evaluation.grids import fixed_noise

# sample(noise (B, C, H, W), condition) -> final state (B, C, H, W): pixels in [-1, 1], or latents to decode
Sample = Callable[[torch.Tensor, Condition], torch.Tensor]


def pixels_01(x_BCHW: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixel-space samples -> [0, 1] RGB (grey repeated to 3 channels). NaN and ±Inf come out as NaN (the
    clamp would turn ±Inf into white or black pixels), so the Evaluator sees which samples failed."""
    if x_BCHW.shape[1] not in (1, 3):
        raise UserError(
            f"metrics need decoded pixels (1 or 3 channels), got {x_BCHW.shape[1]} channels: latent-space students "
            "need a VAE decode before evaluation"
        )
    x = x_BCHW.float()
    x = (torch.where(x.isfinite(), x, torch.nan).clamp(-1, 1) + 1) / 2
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# condition_for(indices (B,) global sample ids) -> (condition of those samples, their captions or None)
ConditionFn = Callable[[torch.Tensor], tuple[Condition, Sequence[str] | None]]


def conditional_generate_fn(
    sample: Sample,
    *,
    noise_shape: tuple[int, int, int],
    condition_for: ConditionFn,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> GenerateFn:
    """Sample i: noise drawn from seed + i, the condition `condition_for` gives index i, the final state decoded to
    pixels (`decode`: latents -> [-1, 1] images, e.g. a VAE's; None for pixel-space samplers). Returns images in
    [0, 1] and the captions (None for class labels)."""

    def generate(indices: torch.Tensor) -> tuple[torch.Tensor, Sequence[str] | None]:
        noise = torch.cat([fixed_noise(1, noise_shape, seed + int(i)) for i in indices]).to(device)
        cond, captions = condition_for(indices)
        x = sample(noise, cond.to(noise.device))
        return pixels_01(decode(x) if decode is not None else x), captions

    return generate


def class_conditional_generate_fn(
    sample: Sample, *, noise_shape: tuple[int, int, int], num_classes: int, seed: int = 0, decode=None, device=None
) -> GenerateFn:
    """Sample i: class i mod num_classes, noise drawn from seed + i. Returns images in [0, 1] and no captions."""
    return conditional_generate_fn(
        sample,
        noise_shape=noise_shape,
        condition_for=lambda indices: (Condition(labels=indices.long() % num_classes), None),
        decode=decode,
        seed=seed,
        device=device,
    )


def prompt_generate_fn(
    sample: Sample,
    *,
    noise_shape: tuple[int, int, int],
    prompts: Sequence[str],
    encode: Callable[[list[str]], Condition],
    decode=None,
    seed: int = 0,
    device=None,
) -> GenerateFn:
    """Text-to-image: sample i is prompt i mod len(prompts) (`encode`d, e.g. by T5), noise drawn from seed + i.
    Returns images in [0, 1] and the prompts, for CLIP score."""
    if not prompts:
        raise UserError("text-to-image evaluation needs at least one prompt")

    def condition_for(indices: torch.Tensor) -> tuple[Condition, list[str]]:
        captions = [prompts[int(i) % len(prompts)] for i in indices]
        return encode(captions), captions

    return conditional_generate_fn(
        sample, noise_shape=noise_shape, condition_for=condition_for, decode=decode, seed=seed, device=device
    )
