"""What differs between teacher families inside the ARD student: time/condition modulation, cross-attention, heads.

Each family turns per-token times into adaLN modulation *once per group* (S distinct times, not S·L tokens) with the
teacher's own embedders and tables — no new parameters — and provides the teacher's final layer as a head module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ard_scale.models.condition import Condition


@dataclass
class Context:
    """Per-forward conditioning, computed once and shared by all blocks.

    mods:      DiT: per block, the six adaLN tensors (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
               gate_mlp), each (B·G, D) for G groups in the forward. PixArt: None (see `t6`).
    t6:        PixArt: (B·G, 6, D) shared timestep modulation; each block adds its own table inside its call.
    head_cond: (B·G, D) conditioning of the final layer.
    text:      (B, L_txt, D) projected caption tokens for cross-attention (PixArt) or None.
    text_bias: (B, 1, L_txt) additive attention bias from the caption mask or None.
    """

    mods: list[tuple[torch.Tensor, ...]] | None
    head_cond: torch.Tensor
    t6: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_bias: torch.Tensor | None = None


class DiTHead(nn.Module):
    """DiT's final layer: adaLN (shift, scale) from the conditioning, then the linear un-patch projection."""

    def __init__(self, proj_out_1: nn.Linear, proj_out_2: nn.Linear):
        super().__init__()
        self.proj_out_1, self.proj_out_2 = proj_out_1, proj_out_2

    def forward(self, x_BLD: torch.Tensor, cond_BD: torch.Tensor, norm_out: nn.Module) -> torch.Tensor:
        shift, scale = self.proj_out_1(F.silu(cond_BD)).chunk(2, dim=1)
        return self.proj_out_2(norm_out(x_BLD) * (1 + scale[:, None]) + shift[:, None])


class PixArtHead(nn.Module):
    """PixArt's final layer: a learned (2, D) shift/scale table plus the embedded timestep, then the projection."""

    def __init__(self, scale_shift_table: nn.Parameter, proj_out: nn.Linear):
        super().__init__()
        self.scale_shift_table, self.proj_out = scale_shift_table, proj_out

    def forward(self, x_BLD: torch.Tensor, cond_BD: torch.Tensor, norm_out: nn.Module) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + cond_BD[:, None]).chunk(2, dim=1)  # (B, 1, D) each
        return self.proj_out(norm_out(x_BLD) * (1 + scale) + shift)


class DiTFamily:
    """Class-conditional DiT (adaLN-Zero): every block has its own timestep + class embedder and modulation MLP."""

    name = "dit"

    @staticmethod
    def take_head(model: nn.Module) -> nn.Module:
        head = DiTHead(model.proj_out_1, model.proj_out_2)
        del model.proj_out_1, model.proj_out_2
        return head

    @staticmethod
    def context(
        model: nn.Module, t_N: torch.Tensor, cond: Condition, repeats: int, dtype, text_from: Context | None = None
    ) -> Context:
        if cond.labels is None:
            raise ValueError("a class-conditional (DiT) student needs class labels, got a text condition")
        labels_N = cond.labels.repeat_interleave(repeats)
        mods, head_cond = [], None
        for block in model.transformer_blocks:
            emb = block.norm1.emb
            # Embedding table directly: LabelEmbedding.forward would drop labels at random in train mode.
            c_ND = emb.timestep_embedder(emb.time_proj(t_N).to(dtype)) + emb.class_embedder.embedding_table(labels_N)
            mods.append(block.norm1.linear(F.silu(c_ND)).chunk(6, dim=1))
            head_cond = c_ND if head_cond is None else head_cond  # the teacher's final layer reads block 0's
        return Context(mods=mods, head_cond=head_cond)

    @staticmethod
    def block_mods(block: nn.Module, i: int, ctx: Context) -> tuple[torch.Tensor, ...]:
        return ctx.mods[i]

    @staticmethod
    def msa_norm(block: nn.Module) -> nn.Module:
        return block.norm1.norm

    @staticmethod
    def ff_norm(block: nn.Module) -> nn.Module:
        return block.norm3


class PixArtFamily:
    """PixArt-style T2I DiT (adaLN-single): one timestep MLP for all blocks plus a learned (6, D) table per block."""

    name = "pixart"

    @staticmethod
    def take_head(model: nn.Module) -> nn.Module:
        head = PixArtHead(model.scale_shift_table, model.proj_out)
        del model.scale_shift_table, model.proj_out
        return head

    @staticmethod
    def context(
        model: nn.Module, t_N: torch.Tensor, cond: Condition, repeats: int, dtype, text_from: Context | None = None
    ) -> Context:
        if cond.text is None:
            raise ValueError("a text-to-image (PixArt) student needs T5 embeddings, got class labels")
        ada = model.adaln_single
        emb_ND = ada.emb(t_N, resolution=None, aspect_ratio=None, batch_size=t_N.shape[0], hidden_dtype=dtype)
        t6_N6D = ada.linear(F.silu(emb_ND)).unflatten(1, (6, -1))
        if text_from is not None:  # the caption does not change between sampling steps
            return Context(mods=None, t6=t6_N6D, head_cond=emb_ND, text=text_from.text, text_bias=text_from.text_bias)
        B = cond.batch_size
        text = model.caption_projection(cond.text.to(dtype)).view(B, -1, emb_ND.shape[-1])
        bias = None
        if cond.text_mask is not None:  # as PixArtTransformer2DModel.forward: 0 keep, -10000 drop
            bias = ((1 - cond.text_mask.to(dtype)) * -10000.0).unsqueeze(1)
        return Context(mods=None, t6=t6_N6D, head_cond=emb_ND, text=text, text_bias=bias)

    @staticmethod
    def block_mods(block: nn.Module, i: int, ctx: Context) -> tuple[torch.Tensor, ...]:
        # Runs inside the block's own call: `scale_shift_table` is the block's direct parameter, which a
        # parameter-partitioning wrapper (ZeRO-3) only materialises while that block's forward runs.
        return tuple((block.scale_shift_table[None] + ctx.t6).unbind(1))

    @staticmethod
    def msa_norm(block: nn.Module) -> nn.Module:
        return block.norm1

    @staticmethod
    def ff_norm(block: nn.Module) -> nn.Module:
        return block.norm2  # PixArt applies no norm before cross-attention; norm2 precedes the MLP


FAMILIES = {"dit": DiTFamily, "pixart": PixArtFamily}
