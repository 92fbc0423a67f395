"""The ARD student (DESIGN.md §1 "Student input" to "Sampling").

A copy of the teacher's network that reads the S states x_{τ_S} … x_{τ_1} of a trajectory at once:
- every state is patch-embedded by the teacher's shared embedder with the same positional embedding, and the S
  groups of L tokens are laid side by side (S·L tokens);
- every token is modulated by the adaLN of its *own* state's time, computed once per group and broadcast;
- the lowest N blocks attend under a history mask (default block-causal), the blocks above block-diagonally,
  exactly as the teacher does;
- S output heads (or one shared), each initialised from the teacher's final layer, predict for group s either the
  teacher's native target (`solver`: the next state is one DDIM/Euler step) or the next state itself (`direct`).

Sampling is autoregressive: S forward passes of L tokens each, with a KV cache in the lowest N blocks only.
"""

from __future__ import annotations

import copy
from functools import partial
from types import MethodType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ard_scale.config.ard import ARDConfig
from ard_scale.diffusion.schedules import Schedule, first_order_step
from ard_scale.models.attention import (
    KVCache,
    cached_attention,
    check_plain_attention,
    group_mask,
    grouped_attention,
    masked_attention,
    token_mask,
)
from ard_scale.models.condition import Condition
from ard_scale.models.families import FAMILIES, Context
from ard_scale.models.teachers import Teacher


class ARDStudent(nn.Module):
    """Autoregressive student built from (and initialised as) a teacher."""

    def __init__(self, teacher: Teacher, cfg: ARDConfig, schedule: Schedule):
        super().__init__()
        cfg.validate(depth=teacher.depth)
        self.cfg, self.schedule = cfg, schedule
        self.family = FAMILIES[teacher.family]
        self.in_channels, self.out_channels = teacher.in_channels, teacher.out_channels
        self.patch_size = teacher.patch_size
        self.backbone = copy.deepcopy(teacher.model).requires_grad_(True).train()
        for block in self.backbone.transformer_blocks:
            check_plain_attention(block.attn1)
            block.forward = MethodType(ard_block_forward, block)
        head = self.family.take_head(self.backbone)
        self.heads = nn.ModuleList(
            [head] + [copy.deepcopy(head) for _ in range(0 if cfg.shared_head else cfg.num_steps - 1)]
        )
        with torch.device("cpu"):  # structure, not weights: stays on CPU even when the model is built on meta
            self.grid = schedule.grid(cfg.num_steps)  # (S+1,) float64: τ_S … τ_1 and the clean end
            self.history_mask = group_mask(cfg.num_steps, cfg.mask, cfg.window)  # (S, S) bool
        self.activation_checkpointing = False

    # -- helpers -----------------------------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.cfg.num_steps

    @property
    def depth(self) -> int:
        return len(self.backbone.transformer_blocks)

    def head(self, step: int) -> nn.Module:
        return self.heads[0 if self.cfg.shared_head else step]

    def _uses_mask(self, layer: int) -> bool:
        return layer < self.cfg.num_causal_layers and self.cfg.mask != "diagonal"

    def _check_states(self, states: torch.Tensor, prefix: bool = False) -> None:
        S, C, p = self.num_steps, self.in_channels, self.patch_size
        if states.ndim != 5 or not (1 <= states.shape[1] <= S if prefix else states.shape[1] == S):
            raise ValueError(
                f"the student takes S={S} states per sample as (B, {S}, {C}, H, W), got "
                f"{tuple(states.shape)}; pass x_τS … x_τ1 of the teacher trajectory"
            )
        if states.shape[2] != C or states.shape[-1] % p or states.shape[-2] % p:
            raise ValueError(
                f"states of shape {tuple(states.shape)} do not match the teacher's patch grid: expected "
                f"{C} channels and H, W multiples of the patch size {p}"
            )

    def _embed(self, x_NCHW: torch.Tensor) -> torch.Tensor:
        # Shared patch embedder + positional embedding: (N, L, D), in the weights' dtype (bf16 under a bf16 engine;
        # states stay fp32 outside the network, and head outputs return in the states' dtype).
        proj = self.backbone.pos_embed.proj
        return self.backbone.pos_embed(x_NCHW.to(proj.weight.dtype))

    def _unpatchify(self, tokens_NLP: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p, c = self.patch_size, self.out_channels
        x = tokens_NLP.reshape(-1, h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(-1, c, h * p, w * p)

    def _block(self, i: int, x_BGLD: torch.Tensor, ctx: Context, attend) -> torch.Tensor:
        # Through the block's own module call, so hooks on it (ZeRO-3 parameter fetch) run as for the teacher.
        return self.backbone.transformer_blocks[i](x_BGLD, i, ctx, attend, self.family)

    def _context(self, t_N: torch.Tensor, cond: Condition, repeats: int, dtype, text_from=None) -> Context:
        model_t = self.schedule.model_time(t_N).to(t_N.device)
        return self.family.context(self.backbone, model_t, cond, repeats, dtype, text_from=text_from)

    # -- training: all S predictions from one forward pass ----------------------------------------------------------
    def forward(self, states: torch.Tensor, cond: Condition, *, prefix: bool = False) -> torch.Tensor:
        """Head outputs for teacher-forced states (B, S, C, H, W) -> (B, S, C_out, H, W).

        With `prefix=True` the first G <= S states may be given alone (x_τS … x_τ(S-G+1)); the masks make their
        predictions the same as in the full forward, which is how sampling without a KV cache recomputes history."""
        self._check_states(states, prefix)
        B, S, C, H, W = states.shape
        h, w = H // self.patch_size, W // self.patch_size
        x_BSLD = self._embed(states.flatten(0, 1)).unflatten(0, (B, S))
        L, D = x_BSLD.shape[2], x_BSLD.shape[3]
        ctx = self._context(self.grid[:S].repeat(B).to(states.device), cond, S, x_BSLD.dtype)
        mask_NN = token_mask(self.history_mask[:S, :S].to(states.device), L) if self.cfg.num_causal_layers else None

        for i in range(self.depth):
            attend = partial(masked_attention, mask_NN=mask_NN) if self._uses_mask(i) else grouped_attention
            if self.activation_checkpointing and torch.is_grad_enabled():
                x_BSLD = checkpoint(self._block, i, x_BSLD, ctx, attend, use_reentrant=False)
            else:
                x_BSLD = self._block(i, x_BSLD, ctx, attend)

        head_cond_BSD = ctx.head_cond.view(B, S, D)
        out = [self.head(s)(x_BSLD[:, s], head_cond_BSD[:, s], self.backbone.norm_out) for s in range(S)]
        return self._unpatchify(torch.stack(out, 1).flatten(0, 1), h, w).unflatten(0, (B, S)).to(states.dtype)

    def next_state(self, x_t: torch.Tensor, out: torch.Tensor, step: int) -> torch.Tensor:
        """The state after student step `step` (0 = from noise) given that step's head output."""
        out = out[:, : self.in_channels]  # drop learned-sigma channels
        if self.cfg.output == "direct":
            return out
        return first_order_step(self.schedule, x_t, self.grid[step], out, self.grid[step + 1])

    def next_states(self, states: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next states (B, G, C, H, W) from the head outputs `out` of the forward on `states`."""
        return torch.stack([self.next_state(states[:, s], out[:, s], s) for s in range(states.shape[1])], 1)

    def predict_next(self, states: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Teacher-forced next states (B, S, C, H, W): the prediction of x_{τ_{s-1}} from the history up to x_{τ_s}."""
        return self.next_states(states, self(states, cond))

    # -- features for the GAN discriminator -------------------------------------------------------------------------
    def features(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, layers: list[int]) -> list[torch.Tensor]:
        """Hidden states (B, L, D) after each block in `layers` for one state x_t (B, C, H, W) at schedule times t
        (B,): the backbone run as the teacher would run it (one group, so no history mask applies), up to the
        highest requested block. Gradients flow to x_t and to the parameters alike; the GAN step decides which
        it takes (see ard_scale.trainer.gan)."""
        x_B1LD = self._embed(x_t)[:, None]
        ctx = self._context(t, cond, 1, x_B1LD.dtype)
        feats = {}
        for i in range(max(layers) + 1):
            x_B1LD = self._block(i, x_B1LD, ctx, grouped_attention)
            feats[i] = x_B1LD[:, 0]
        return [feats[i] for i in layers]

    # -- sampling: S steps of L tokens with a KV cache in the lowest N blocks ---------------------------------------
    @torch.no_grad()
    def sample(self, noise: torch.Tensor, cond: Condition, *, return_states: bool = False) -> torch.Tensor:
        """Autoregressive S-step generation from x_{τ_S} = noise (B, C, H, W). Returns the final state, or all
        S+1 states (B, S+1, C, H, W) with `return_states`."""
        if noise.ndim != 4:
            raise ValueError(f"noise must be (B, C, H, W), got {tuple(noise.shape)}")
        self._check_states(noise[:, None].expand(-1, self.num_steps, -1, -1, -1))
        B, _, H, W = noise.shape
        h, w = H // self.patch_size, W // self.patch_size
        caches = [KVCache() for _ in range(self.cfg.num_causal_layers)]
        x, states, text_ctx = noise, [noise], None
        for g in range(self.num_steps):
            x_B1LD = self._embed(x)[:, None]
            ctx = self._context(self.grid[g].repeat(B).to(noise.device), cond, 1, x_B1LD.dtype, text_from=text_ctx)
            text_ctx = ctx
            visible = self.history_mask[g].nonzero().flatten().tolist()
            for i in range(self.depth):
                cached = i < self.cfg.num_causal_layers
                attend = partial(cached_attention, cache=caches[i], visible=visible) if cached else grouped_attention
                x_B1LD = self._block(i, x_B1LD, ctx, attend)
            out = self.head(g)(x_B1LD[:, 0], ctx.head_cond, self.backbone.norm_out)
            x = self.next_state(x, self._unpatchify(out, h, w).to(noise.dtype), g)
            states.append(x)
        return torch.stack(states, 1) if return_states else x


def ard_block_forward(block: nn.Module, x_BGLD: torch.Tensor, i: int, ctx: Context, attend, family) -> torch.Tensor:
    """A teacher block's computation over G groups, with per-group adaLN modulation broadcast over each group.

    Installed as the `forward` of each of the student's copies of the teacher's blocks, so the block keeps its
    diffusers parameter names (checkpoints and exports load strictly) and its module call stays the unit that
    wrappers hook into."""
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
