"""Shared helpers of the model tests (imported by basename: a dependency ships a top-level `tests` package)."""

import torch

from ard_scale.diffusion.condition import Condition

FAMILIES = ("dit", "pixart", "flux", "sd3", "qwen_image")


def make_condition(family: str, batch: int, seed: int = 0) -> Condition:
    g = torch.Generator().manual_seed(seed)
    if family == "dit":
        return Condition(labels=torch.randint(0, 10, (batch,), generator=g))
    if family == "flux":  # T5 tokens (FLUX attends to all of them), pooled CLIP, distilled guidance
        return Condition(
            text=torch.randn(batch, 6, 24, generator=g),
            pooled=torch.randn(batch, 16, generator=g),
            guidance=torch.full((batch,), 3.5),
        )
    if family == "sd3":  # CLIP + T5 tokens (SD3 attends to all of them), pooled CLIP-L ‖ CLIP-G, true CFG
        return Condition(text=torch.randn(batch, 6, 24, generator=g), pooled=torch.randn(batch, 24, generator=g))
    # PixArt (T5) and Qwen-Image (Qwen2.5-VL hidden states): tokens with their mask
    mask = torch.ones(batch, 6, dtype=torch.long)
    mask[0, 4:] = 0  # padded caption: the mask must be honoured
    return Condition(text=torch.randn(batch, 6, 24, generator=g), text_mask=mask)


def small_side(teacher, want: int = 16) -> int:
    """A latent side the teacher takes that keeps a test cheap: `want` where the family accepts any side (FLUX and
    Qwen-Image default to 128, i.e. 4096 packed tokens), else its fixed sample size."""
    try:
        teacher.spec.check_latent_side(teacher.model, want)
    except ValueError:
        return teacher.sample_size
    return want
