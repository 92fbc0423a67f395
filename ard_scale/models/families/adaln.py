"""The single-stream adaLN DiT layout shared by `dit` and `pixart`: one image stream of blocks with `attn1`, an
optional caption cross-attention `attn2` and `ff`, modulated by adaLN.

Student layout: the S states are patch-embedded by the shared embedder with the same positional embedding and laid
side by side (S·L tokens); each group's adaLN modulation is computed once per group (S distinct times) with the
teacher's own embedders and tables — no new parameters — and broadcast over the group's tokens; cross-attention to the
caption is unchanged (every group sees it). Each block's `forward` is replaced by `ard_block_forward`, so the block
keeps its diffusers parameter names (checkpoints and exports load strictly) and its module call stays the unit that
wrappers (ZeRO-3) hook into.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from types import MethodType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ard_scale.diffusion.condition import Condition
from ard_scale.models.attention import (
    KVCache,
    cached_attention,
    check_plain_attention,
    grouped_attention,
    masked_attention,
    token_mask,
)
from ard_scale.models.families.base import Family


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


class AdaLNFamily(Family):
    """Student computation of the single-stream adaLN families; subclasses give context, norms and heads."""

    # -- what subclasses provide -------------------------------------------------------------------------------------
    @staticmethod
    def take_head(model: nn.Module) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def context(model, t_N, cond: Condition, repeats: int, dtype, text_from: Context | None = None) -> Context:
        raise NotImplementedError

    @staticmethod
    def block_mods(block: nn.Module, i: int, ctx: Context) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @staticmethod
    def msa_norm(block: nn.Module) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def ff_norm(block: nn.Module) -> nn.Module:
        raise NotImplementedError

    # -- the student -------------------------------------------------------------------------------------------------
    @classmethod
    def prepare_student(cls, student) -> nn.Module:
        for block in student.backbone.transformer_blocks:
            check_plain_attention(block.attn1)
            block.forward = MethodType(ard_block_forward, block)
        return cls.take_head(student.backbone)

    @classmethod
    def _embed(cls, student, x_NCHW: torch.Tensor) -> torch.Tensor:
        # Shared patch embedder + positional embedding: (N, L, D), in the weights' dtype (bf16 under a bf16 engine;
        # states stay fp32 outside the network, and head outputs return in the states' dtype).
        proj = student.backbone.pos_embed.proj
        return student.backbone.pos_embed(x_NCHW.to(proj.weight.dtype))

    @classmethod
    def _unpatchify(cls, student, tokens_NLP: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p, c = student.patch_size, student.out_channels
        x = tokens_NLP.reshape(-1, h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(-1, c, h * p, w * p)

    @classmethod
    def _block(cls, student, i: int, x_BGLD: torch.Tensor, ctx: Context, attend) -> torch.Tensor:
        # Through the block's own module call, so hooks on it (ZeRO-3 parameter fetch) run as for the teacher.
        return student.backbone.transformer_blocks[i](x_BGLD, i, ctx, attend, cls)

    @classmethod
    def _context(cls, student, t_N: torch.Tensor, cond: Condition, repeats: int, dtype, text_from=None) -> Context:
        cls.check_condition(cond, "student")
        model_t = student.schedule.model_time(t_N).to(t_N.device)
        return cls.context(student.backbone, model_t, cond, repeats, dtype, text_from=text_from)

    @classmethod
    def student_forward(cls, student, states: torch.Tensor, cond: Condition) -> torch.Tensor:
        B, S, C, H, W = states.shape
        h, w = H // student.patch_size, W // student.patch_size
        x_BSLD = cls._embed(student, states.flatten(0, 1)).unflatten(0, (B, S))
        L, D = x_BSLD.shape[2], x_BSLD.shape[3]
        ctx = cls._context(student, student.grid[:S].repeat(B).to(states.device), cond, S, x_BSLD.dtype)
        mask_SS = student.history_mask[:S, :S]
        history = student.history_kernel(states.device)
        # the dense token mask (SDPA) is expanded once per forward, not per block; flex caches its BlockMask
        dense = history == "sdpa" and student.cfg.num_causal_layers
        mask_NN = token_mask(mask_SS.to(states.device), L) if dense else None
        history_attend = partial(masked_attention, mask_SS=mask_SS, history=history, mask_NN=mask_NN)

        for i in range(student.depth):
            attend = history_attend if student.uses_mask(i) else grouped_attention
            if student.activation_checkpointing and torch.is_grad_enabled():
                x_BSLD = checkpoint(partial(cls._block, student), i, x_BSLD, ctx, attend, use_reentrant=False)
            else:
                x_BSLD = cls._block(student, i, x_BSLD, ctx, attend)

        head_cond_BSD = ctx.head_cond.view(B, S, D)
        norm_out = student.backbone.norm_out
        out = [student.head(s)(x_BSLD[:, s], head_cond_BSD[:, s], norm_out) for s in range(S)]
        return cls._unpatchify(student, torch.stack(out, 1).flatten(0, 1), h, w).unflatten(0, (B, S))

    @classmethod
    def student_features(cls, student, x_t, t, cond, layers: list[int]) -> list[torch.Tensor]:
        x_B1LD = cls._embed(student, x_t)[:, None]
        ctx = cls._context(student, t, cond, 1, x_B1LD.dtype)
        feats = {}
        for i in range(max(layers) + 1):
            x_B1LD = cls._block(student, i, x_B1LD, ctx, grouped_attention)
            feats[i] = x_B1LD[:, 0]
        return [feats[i] for i in layers]

    @classmethod
    def student_sample(cls, student, noise: torch.Tensor, cond: Condition) -> list[torch.Tensor]:
        B, _, H, W = noise.shape
        h, w = H // student.patch_size, W // student.patch_size
        caches = [KVCache() for _ in range(student.cfg.num_causal_layers)]
        x, states, text_ctx = noise, [noise], None
        for g in range(student.num_steps):
            x_B1LD = cls._embed(student, x)[:, None]
            t_B = student.grid[g].repeat(B).to(noise.device)
            ctx = cls._context(student, t_B, cond, 1, x_B1LD.dtype, text_from=text_ctx)
            text_ctx = ctx
            visible = student.history_mask[g].nonzero().flatten().tolist()
            for i in range(student.depth):
                cached = i < student.cfg.num_causal_layers
                attend = partial(cached_attention, cache=caches[i], visible=visible) if cached else grouped_attention
                x_B1LD = cls._block(student, i, x_B1LD, ctx, attend)
            out = student.head(g)(x_B1LD[:, 0], ctx.head_cond, student.backbone.norm_out)
            x = student.next_state(x, cls._unpatchify(student, out, h, w).to(noise.dtype), g)
            states.append(x)
        return states


def ard_block_forward(block: nn.Module, x_BGLD: torch.Tensor, i: int, ctx: Context, attend, family) -> torch.Tensor:
    """A teacher block's computation over G groups, with per-group adaLN modulation broadcast over each group."""
    B, G, L, D = x_BGLD.shape
    sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = (m.view(B, G, 1, D) for m in family.block_mods(block, i, ctx))
    h = family.msa_norm(block)(x_BGLD) * (1 + sc_msa) + sh_msa
    x_BGLD = x_BGLD + g_msa * attend(block.attn1, h)
    if block.attn2 is not None:  # cross-attention to the caption: every group sees it
        x_BND = x_BGLD.reshape(B, G * L, D)
        x_BGLD = x_BGLD + block.attn2(x_BND, encoder_hidden_states=ctx.text, attention_mask=ctx.text_bias).view(
            B, G, L, D
        )
    h = family.ff_norm(block)(x_BGLD) * (1 + sc_mlp) + sh_mlp
    return x_BGLD + g_mlp * block.ff(h)


def caption_bias(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """As PixArtTransformer2DModel.forward: 0 keep, -10000 drop, (B, 1, L_txt)."""
    return None if mask is None else ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)
