"""ARD's regression objective (DESIGN.md §1 "Regression loss (R)")."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ard_scale.diffusion.condition import Condition
from ard_scale.errors import UserError


class RegressionLoss:
    """L_R = Σ_s w_s · MSE(x̂_{τ_{s-1}}, x_{τ_{s-1}}) / Σ_s w_s over the S student steps, in latent space.

    The student sees the teacher's states x_{τ_S} … x_{τ_1} (teacher forcing) and predicts every next state in one
    forward pass; the targets are the teacher's recorded states x_{τ_{S-1}} … x_{τ_0}.
    """

    def __init__(self, num_steps: int, weights: Sequence[float] | None = None):
        weights = [1.0] * num_steps if weights is None else list(weights)
        if len(weights) != num_steps or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise UserError(f"loss weights must be {num_steps} non-negative numbers with a positive sum, got {weights}")
        self.weights = torch.tensor(weights, dtype=torch.float32) / sum(weights)

    def __call__(self, student, trajectory_states: torch.Tensor, cond: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """student: an `ARDStudent` or a wrapper of one with `.module` (a DeepSpeed engine), called as a module so
        the wrapper's forward runs. trajectory_states: (B, S+1, C, H, W). Returns (loss, per-step MSE (S,))."""
        inputs, targets = trajectory_states[:, :-1], trajectory_states[:, 1:]
        module = getattr(student, "module", student)
        out = student(inputs, cond)
        return self.from_predictions(module.next_states(inputs, out), targets)

    def from_predictions(self, pred: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of predicted next states (B, S, C, H, W) against the teacher's (B, S, C, H, W)."""
        per_step = (pred.float() - targets.float()).pow(2).mean(dim=(0, 2, 3, 4))
        loss = (per_step * self.weights.to(per_step.device)).sum()
        return loss, per_step.detach()
