"""ARD's adversarial objectives (DESIGN.md §1 "GAN fine-tuning (R+G)").

All logits are per token: (B, T) with T = heads × tokens per head; means run over every logit.

- hinge (Lim & Ye 2017; Miyato et al. 2018): L_D = E[relu(1 - D(x_r))] + E[relu(1 + D(x_f))], L_G = -E[D(x_f)]
- non-saturating (Goodfellow et al. 2014): L_D = E[softplus(-D(x_r))] + E[softplus(D(x_f))],
  L_G = E[softplus(-D(x_f))]
- approximate R1 (Lin et al. 2025, "Diffusion Adversarial Post-Training", eq. 4): E[(D(x_r) - D(x_r + σ·ε))²], a
  finite-difference stand-in for the R1 penalty E‖∇_x D(x_r)‖² that needs no double backward through the (ZeRO-3
  sharded) feature backbone.
- adaptive weight (Esser et al. 2021, VQGAN eq. 7, here at the student's output activation instead of the last
  layer's weight, because weights are sharded under ZeRO-3):  w = λ · clamp(‖∇_out L_R‖ / ‖∇_out L_G‖, 0, max).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ard_scale.errors import UserError

GANLoss = Literal["hinge", "non_saturating"]


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: GANLoss) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "non_saturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    raise UserError(f"unknown GAN loss {kind!r}; choose 'hinge' or 'non_saturating'")


def generator_loss(fake_logits: torch.Tensor, kind: GANLoss) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    raise UserError(f"unknown GAN loss {kind!r}; choose 'hinge' or 'non_saturating'")


def approximate_r1(real_logits: torch.Tensor, perturbed_real_logits: torch.Tensor) -> torch.Tensor:
    return (real_logits - perturbed_real_logits).pow(2).mean()


def adaptive_weight(
    grad_r_sq: torch.Tensor, grad_g_sq: torch.Tensor, *, lam: float, max_ratio: float, eps: float = 1e-12
) -> torch.Tensor:
    """λ · clamp(‖∇L_R‖ / ‖∇L_G‖, 0, max_ratio) from the squared gradient norms (already summed over ranks)."""
    ratio = grad_r_sq.sqrt() / (grad_g_sq.sqrt() + eps)
    return lam * ratio.clamp(0, max_ratio)
