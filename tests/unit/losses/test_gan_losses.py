"""The adversarial objectives against independent formulations."""

import pytest
import torch
import torch.nn.functional as F

from ard_scale.losses.gan import adaptive_weight, approximate_r1, discriminator_loss, generator_loss


def logits(seed: int) -> torch.Tensor:
    return torch.randn(4, 12, generator=torch.Generator().manual_seed(seed)) * 3


def test_hinge_matches_its_definition_elementwise():
    real, fake = logits(0), logits(1)
    expected = (
        torch.stack([torch.clamp(1 - r, min=0) for r in real.flatten()]).mean()
        + torch.stack([torch.clamp(1 + f, min=0) for f in fake.flatten()]).mean()
    )
    torch.testing.assert_close(discriminator_loss(real, fake, "hinge"), expected)
    torch.testing.assert_close(generator_loss(fake, "hinge"), -fake.mean())
    # a perfect discriminator (margins met) has zero hinge loss
    assert discriminator_loss(torch.full((2, 3), 1.5), torch.full((2, 3), -1.5), "hinge") == 0


def test_non_saturating_is_binary_cross_entropy_with_real_as_one():
    real, fake = logits(2), logits(3)
    bce = F.binary_cross_entropy_with_logits
    expected_d = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
    torch.testing.assert_close(discriminator_loss(real, fake, "non_saturating"), expected_d)
    torch.testing.assert_close(generator_loss(fake, "non_saturating"), bce(fake, torch.ones_like(fake)))
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_loss(fake, "wasserstein")


def test_approximate_r1_is_zero_for_a_flat_discriminator_and_grows_with_its_slope():
    x = logits(4)
    assert approximate_r1(x, x) == 0
    assert approximate_r1(x, x + 0.2) == pytest.approx(0.04)


def test_adaptive_weight_is_the_clamped_norm_ratio_times_lambda():
    w = adaptive_weight(torch.tensor(9.0), torch.tensor(4.0), lam=10.0, max_ratio=1e4)
    assert w.item() == pytest.approx(10.0 * 3 / 2)
    huge = adaptive_weight(torch.tensor(1.0), torch.tensor(0.0), lam=2.0, max_ratio=100.0)
    assert huge.item() == pytest.approx(200.0)  # ‖∇L_G‖ = 0: clamped, not inf
