"""Block-sparse history attention for the lowest N blocks: FlexAttention with a `BlockMask` built from the group mask.

SDPA with a dense boolean (S·L, S·L) mask computes every block, masked or not (the causal mask at S=4 allows 62.5 %
of them); FlexAttention skips the blocks the mask rules out. The mask is given as a `mask_mod` on the token -> group
index, so it is exact for any tokens-per-group L (also when L is not a multiple of the 128-token block), and a key
padding mask (Qwen-Image's text padding) is applied in a `score_mod` on the same call, so the BlockMask of a shape is
built once and cached. SDPA with the dense mask stays as the fallback and the reference (`student.attention`).

In torch 2.14 FlexAttention has no backward on CPU (forward only, compiled), so `auto` picks it on CUDA only.
"""

from __future__ import annotations

import torch

from ard_scale.config.ard import ATTENTION_KINDS
from ard_scale.errors import UserError

RECOMPILE_LIMIT = 64  # distinct shapes the compiled kernel serves in one process
_compiled = None  # torch.compile(flex_attention), created on first use (compiling is per shape, on the first call)


def resolve_attention(setting: str, device) -> str:
    """The history-attention kernel for `student.attention` on `device`: 'flex' or 'sdpa' ('auto' = flex on CUDA)."""
    if setting not in ATTENTION_KINDS:
        raise UserError(f"student.attention: unknown {setting!r} (choose one of {', '.join(ATTENTION_KINDS)})")
    if setting == "auto":
        return "flex" if torch.device(device).type == "cuda" else "sdpa"
    return setting


def _flex_attention():
    global _compiled
    if _compiled is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


class HistoryMask:
    """A (G, G) group mask over G groups of L tokens as a FlexAttention BlockMask, cached per (L, device).

    Entry [g, h] of the group mask says whether group g may attend to group h (ard_scale.models.attention.group_mask);
    token i belongs to group i // L."""

    _cache: dict = {}  # (mask bits, G, L, device) -> BlockMask; shared by every student in the process

    def __init__(self, mask_GG: torch.Tensor):
        self.mask_GG = mask_GG.to(torch.bool).cpu()
        self.groups = self.mask_GG.shape[0]

    def block_mask(self, tokens_per_group: int, device):
        from torch.nn.attention.flex_attention import create_block_mask

        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        G, L = self.groups, int(tokens_per_group)
        key = (tuple(self.mask_GG.flatten().tolist()), G, L, str(device))
        cached = HistoryMask._cache.get(key)
        if cached is None:
            group_of = torch.arange(G * L, device=device) // L  # token -> its group
            allowed = self.mask_GG.to(device)

            def mask_mod(b, h, q_idx, kv_idx):
                return allowed[group_of[q_idx], group_of[kv_idx]]

            cached = create_block_mask(mask_mod, None, None, G * L, G * L, device=device)
            HistoryMask._cache[key] = cached
        return cached


def history_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_GG: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of (B, H, G·L, d) queries over keys/values of the same shape under the (G, G) group mask, with
    FlexAttention; `key_mask` (B, G·L) bool (False = padding, never attended). Equals SDPA with
    `token_mask(mask_GG, L) & key_mask` (the reference, ard_scale.models.attention)."""
    B, H, N, d = q.shape
    G = mask_GG.shape[0]
    if N % G:
        raise UserError(f"{N} tokens do not split into {G} groups")
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise UserError(
            "student.attention 'flex' has no backward on CPU (torch 2.14 FlexAttention is forward-only there); "
            "set student.attention: sdpa (or auto, which picks flex on CUDA only) to train on CPU"
        )
    block_mask = HistoryMask(mask_GG).block_mask(N // G, q.device)
    score_mod = None
    if key_mask is not None:
        keep = key_mask.to(device=q.device, dtype=torch.bool).reshape(B, N)

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(keep[b, kv_idx], score, -float("inf"))

    # compiled once per shape (dynamic=False): training, prefix recomputes and key-mask variants are more shapes than
    # dynamo's default 8 recompiles, after which it would silently fall back to the eager (dense) flex_attention
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return _flex_attention()(q, k, v, score_mod=score_mod, block_mask=block_mask)
