"""Condition batching: concatenating conditions keeps what each one means to the teacher."""

import torch

from ard_scale.diffusion.condition import Condition
from ard_scale.models.teachers import build_teacher


def test_cat_of_a_masked_and_an_unmasked_caption_batch_keeps_every_token_of_the_unmasked_one():
    """`text_mask=None` means every token is valid: batched with a masked condition (CFG's conditional and null halves
    in one forward) it must become a mask of ones, so the PixArt teacher gives each half what it gives it alone."""
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 3:] = 0
    masked = Condition(text=torch.randn(2, 6, 24, generator=g), text_mask=mask)
    unmasked = Condition(text=torch.randn(2, 6, 24, generator=g))
    both = Condition.cat([masked, unmasked])
    assert torch.equal(both.text_mask, torch.cat([mask, torch.ones(2, 6, dtype=torch.long)]))
    assert torch.equal(Condition.cat([unmasked, masked]).text_mask[2:], mask)

    teacher = build_teacher("pixart", "debug", seed=1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.full((2,), 500.0)
    with torch.no_grad():
        batched = teacher(torch.cat([x, x]), torch.cat([t, t]), both)
        torch.testing.assert_close(batched[:2], teacher(x, t, masked), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched[2:], teacher(x, t, unmasked), rtol=1e-5, atol=1e-6)
