"""Discriminator heads on hidden states of a feature backbone (DESIGN.md §1 "GAN fine-tuning (R+G)").

One head per chosen backbone block. A head reads that block's tokens (B, L, D) as a 1-D sequence:
spectral-norm Conv1d (kernel 1) → LeakyReLU 0.2 → spectral-norm Conv1d (kernel 3) → LeakyReLU 0.2, then per-token
logits from a spectral-norm Conv1d (kernel 1) plus a projection term ⟨φ(h)_l, P·e(c)⟩ (Miyato & Koyama 2018) with
e(c) the class embedding or the mask-pooled caption embedding. Output: (B, heads·L) logits.

Spectral norm keeps a power-iteration vector per weight that advances on every forward in train mode. The GAN step
runs the heads in eval mode in the generator phase, so that phase leaves them exactly unchanged.

The backbone is not part of this module: `ARDStudent.features` and `Teacher.features` give its hidden states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ard_scale.diffusion.condition import Condition
from ard_scale.errors import UserError


class DiscriminatorHead(nn.Module):
    def __init__(self, dim: int, hidden: int, cond_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            spectral_norm(nn.Conv1d(dim, hidden, 1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv1d(hidden, hidden, 3, padding=1)),
            nn.LeakyReLU(0.2),
        )
        self.out = spectral_norm(nn.Conv1d(hidden, 1, 1))
        self.project = nn.Linear(cond_dim, hidden, bias=False)
        self.scale = 1 / math.sqrt(hidden)

    def forward(self, h_BLD: torch.Tensor, c_BC: torch.Tensor) -> torch.Tensor:
        phi_BHL = self.body(h_BLD.transpose(1, 2))
        projection_BL = torch.einsum("bhl,bh->bl", phi_BHL, self.project(c_BC)) * self.scale
        return self.out(phi_BHL)[:, 0] + projection_BL


class Discriminator(nn.Module):
    """Heads for `num_heads` feature maps of width `dim`, conditioned on a class (`num_classes`) or on a caption
    embedding of width `text_dim` (mask-mean pooled)."""

    def __init__(
        self,
        *,
        num_heads: int,
        dim: int,
        hidden: int = 256,
        cond_dim: int = 256,
        num_classes: int | None = None,
        text_dim: int | None = None,
    ):
        super().__init__()
        if (num_classes is None) == (text_dim is None):
            raise UserError("a discriminator is conditioned on classes or on text: give num_classes or text_dim")
        self.class_embed = nn.Embedding(num_classes, cond_dim) if num_classes is not None else None
        self.text_embed = nn.Linear(text_dim, cond_dim) if text_dim is not None else None
        self.heads = nn.ModuleList([DiscriminatorHead(dim, hidden, cond_dim) for _ in range(num_heads)])

    @classmethod
    def for_teacher(cls, teacher, *, num_heads: int, hidden: int = 256) -> Discriminator:
        """Heads for `num_heads` blocks of a `Teacher` (or of a student copied from it): the blocks' width, and the
        teacher's own kind of condition (its classes, or its caption embedding width)."""
        if teacher.condition_kind == "labels":
            cond_kwargs = {"num_classes": teacher.num_classes}
        else:
            cond_kwargs = {"text_dim": teacher.text_dim}
        return cls(num_heads=num_heads, dim=teacher.width, hidden=hidden, cond_dim=hidden, **cond_kwargs)

    def embed(self, cond: Condition) -> torch.Tensor:
        if self.class_embed is not None:
            if cond.labels is None:
                raise UserError("this discriminator is class-conditional, got a text condition")
            return self.class_embed(cond.labels)
        if cond.text is None:
            raise UserError("this discriminator is text-conditional, got class labels")
        text = cond.text.float()
        if cond.text_mask is None:
            pooled = text.mean(1)
        else:
            m = cond.text_mask.float()[..., None]
            pooled = (text * m).sum(1) / m.sum(1).clamp(min=1)
        return self.text_embed(pooled)

    def forward(self, features: Sequence[torch.Tensor], cond: Condition) -> torch.Tensor:
        if len(features) != len(self.heads):
            raise UserError(f"{len(features)} feature maps for {len(self.heads)} discriminator heads")
        c = self.embed(cond)
        return torch.cat([head(f.float(), c) for head, f in zip(self.heads, features, strict=True)], 1)
