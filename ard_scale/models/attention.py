"""Self-attention for the ARD student over S groups of L tokens, reusing a diffusers `Attention`'s projections.

Three ways to run it, all with the teacher's weights (`to_q`, `to_k`, `to_v`, `to_out`):
- `grouped_attention`: block-diagonal layers (and the 'diagonal' mask) as batched per-group attention — the
  (B, S·L) sequence is folded to (B·S, L) so no mask is materialised and no cross-group work is done;
- `masked_attention`: the lowest N layers under a history mask: FlexAttention with a block-sparse BlockMask
  (ard_scale.models.flex, `student.attention: flex`), or SDPA with a dense boolean (S·L, S·L) mask (`sdpa`, the
  reference and the fallback);
- `cached_attention`: one new group at sampling time against a KV cache of the groups its mask lets it see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ard_scale.config.ard import MaskKind
from ard_scale.errors import UserError
from ard_scale.models.flex import history_attention


def group_mask(num_groups: int, kind: MaskKind, window: int = 2, device=None) -> torch.Tensor:
    """(S, S) bool: entry [g, h] says whether group g may attend to group h (DESIGN.md §1 'Masks', M1–M4)."""
    g = torch.arange(num_groups, device=device)[:, None]
    h = torch.arange(num_groups, device=device)[None, :]
    if kind == "diagonal":  # M1
        return g == h
    if kind == "window":  # M2: itself and the window-1 groups before it
        return (h <= g) & (h > g - window)
    if kind == "first":  # M3: itself and the first (pure-noise) group
        return (h == g) | (h == 0)
    if kind == "causal":  # M4
        return h <= g
    raise UserError(f"unknown mask {kind!r}; choose diagonal, window, first or causal")


def token_mask(mask_SS: torch.Tensor, tokens_per_group: int) -> torch.Tensor:
    """Expand a group mask to the (S·L, S·L) token mask SDPA takes (True = may attend)."""
    return mask_SS.repeat_interleave(tokens_per_group, 0).repeat_interleave(tokens_per_group, 1)


def check_plain_attention(attn: nn.Module) -> None:
    """We re-run the projections ourselves; refuse Attention variants whose extra steps we would skip."""
    unsupported = [
        name
        for name in ("norm_q", "norm_k", "norm_cross", "spatial_norm", "group_norm")
        if getattr(attn, name, None) is not None
    ]
    if unsupported or getattr(attn, "residual_connection", False) or getattr(attn, "rescale_output_factor", 1) != 1:
        raise UserError(
            f"unsupported attention layer (has {unsupported or 'residual/rescale'}); "
            "ARD supports the plain self-attention of DiT and PixArt blocks"
        )


def project_qkv(attn: nn.Module, x_BND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as (B, heads, N, head_dim)."""
    B, N, _ = x_BND.shape
    heads = attn.heads

    def split(t):
        return t.view(B, N, heads, -1).transpose(1, 2)

    return split(attn.to_q(x_BND)), split(attn.to_k(x_BND)), split(attn.to_v(x_BND))


def project_out(attn: nn.Module, o_BHND: torch.Tensor) -> torch.Tensor:
    B, H, N, hd = o_BHND.shape
    o_BND = o_BHND.transpose(1, 2).reshape(B, N, H * hd)
    return attn.to_out[1](attn.to_out[0](o_BND))


def grouped_attention(attn: nn.Module, x_BSLD: torch.Tensor) -> torch.Tensor:
    """Each group attends only to itself: (B, S, L, D) -> (B, S, L, D), batched as B·S independent sequences."""
    B, S, L, D = x_BSLD.shape
    q, k, v = project_qkv(attn, x_BSLD.reshape(B * S, L, D))
    return project_out(attn, F.scaled_dot_product_attention(q, k, v)).view(B, S, L, D)


def masked_attention(
    attn: nn.Module,
    x_BSLD: torch.Tensor,
    *,
    mask_SS: torch.Tensor,
    history: str = "sdpa",
    mask_NN: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention over all S·L tokens under the (S, S) group mask: `history` 'flex' (block-sparse) or 'sdpa' (dense
    boolean token mask, `mask_NN` if given, else expanded from `mask_SS`)."""
    B, S, L, D = x_BSLD.shape
    q, k, v = project_qkv(attn, x_BSLD.reshape(B, S * L, D))
    if history == "flex":
        o = history_attention(q, k, v, mask_SS)
    else:
        mask_NN = token_mask(mask_SS.to(q.device), L) if mask_NN is None else mask_NN
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_NN)
    return project_out(attn, o).view(B, S, L, D)


class KVCache:
    """Keys and values of the groups seen so far, for one of the lowest N blocks."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # per group (B, heads, L, head_dim)
        self.values: list[torch.Tensor] = []


def cached_attention(attn: nn.Module, x_B1LD: torch.Tensor, *, cache: KVCache, visible: list[int]) -> torch.Tensor:
    """The newest group's tokens (B, 1, L, D) attend to themselves and to the cached groups listed in `visible`.

    The new group's keys and values are appended to `cache` first, so `visible` indexes groups 0..g including g.
    """
    q, k, v = project_qkv(attn, x_B1LD[:, 0])
    cache.keys.append(k)
    cache.values.append(v)
    keys = torch.cat([cache.keys[i] for i in visible], dim=2)
    values = torch.cat([cache.values[i] for i in visible], dim=2)
    return project_out(attn, F.scaled_dot_product_attention(q, keys, values))[:, None]


class AttentionPlan:
    """What the installed processors of a joint-attention family (FLUX, SD3, Qwen-Image) do in the current forward,
    set by the student before it runs the blocks; `attend` is their attention over (B·G, H, L, d) queries/keys/values.

    mode 'grouped': each of the B·G sequences attends to itself (the teacher's attention).
    mode 'masked':  sequences are G groups per sample; group g sees the groups `mask_GG[g]` allows, computed by
                    `history`: 'flex' (block-sparse FlexAttention) or 'sdpa' (dense boolean mask, the reference).
    mode 'cached':  one new group per sample; it appends its keys/values to its layer's cache (under `key`) and
                    attends to the cached groups listed in `visible` (indices 0..g, g included).
    `key_mask` (B·G, L) bool, optional: the keys each sequence may attend to at all (False = padding, e.g. Qwen-Image's
    text padding); it is combined with the group mask, and cached with each group's keys."""

    def __init__(self):
        self.mode, self.groups, self.mask_GG, self.visible = "grouped", 1, None, None
        self.history = "sdpa"
        self.caches: dict = {}

    def attend(self, key, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask=None) -> torch.Tensor:
        if self.mode == "grouped":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=_keys(key_mask))
        if self.mode == "masked":
            BG, H, L, d = q.shape
            G = self.groups
            B = BG // G

            def fold(t):  # (B·G, H, L, d) -> (B, H, G·L, d)
                return t.view(B, G, H, L, d).transpose(1, 2).reshape(B, H, G * L, d)

            if self.history == "flex":
                keep = None if key_mask is None else key_mask.reshape(B, G * L)
                o = history_attention(fold(q), fold(k), fold(v), self.mask_GG, keep)
                return o.view(B, H, G, L, d).transpose(1, 2).reshape(BG, H, L, d)
            mask = token_mask(self.mask_GG.to(q.device), L)
            if key_mask is not None:  # (B·G, L) -> (B, 1, 1, G·L), and-ed with the (G·L, G·L) group mask
                mask = mask & key_mask.reshape(B, 1, 1, G * L)
            o = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), attn_mask=mask)
            return o.view(B, H, G, L, d).transpose(1, 2).reshape(BG, H, L, d)
        keys, values, masks = self.caches.setdefault(key, ([], [], []))
        keys.append(k)
        values.append(v)
        masks.append(key_mask)
        ks = torch.cat([keys[i] for i in self.visible], dim=2)
        vs = torch.cat([values[i] for i in self.visible], dim=2)
        km = None
        if any(masks[i] is not None for i in self.visible):
            km = torch.cat([_all_keys(masks[i], keys[i]) for i in self.visible], dim=1)
        return F.scaled_dot_product_attention(q, ks, vs, attn_mask=_keys(km))


def _keys(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(N, L) key mask -> the (N, 1, 1, L) boolean SDPA mask, or None."""
    return None if key_mask is None else key_mask[:, None, None, :]


def _all_keys(key_mask: torch.Tensor | None, k: torch.Tensor) -> torch.Tensor:
    return torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device) if key_mask is None else key_mask
