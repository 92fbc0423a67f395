"""The planner's measurements on meta-device models: the bytes a training forward saves for backward and its FLOPs
(`student_pass`), the working set and FLOPs of a forward without grad (`inference_pass`), and the same two derived
for Qwen2.5-VL, whose rotary embedding does not run on meta (`qwen_encode_cost`).

Attention is counted as the GPU kernels run it, not as the math fallback the meta device would: SDPA as the fused
(flash / memory-efficient) kernels save it, and the history attention as FlexAttention computes it (the group pairs
its mask allows) when the student was built with `attention='flex'`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ard_scale.diffusion.condition import Condition
from ard_scale.models import attention as attention_module  # where the blocks call history_attention
from ard_scale.models.student import ARDStudent

_SDPA = F.scaled_dot_product_attention
_IN_SDPA = [False]  # the math path's (B, H, N, N) intermediates are no working set of the fused kernels


class _FusedSDPA(torch.autograd.Function):
    """Stands in for SDPA on meta: runs the real op (so the FLOP counter sees it) but saves what the flash /
    memory-efficient kernels save, not the math path's (B, H, N, N) probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, mask, bias):
        _IN_SDPA[0] = True
        try:
            out = _SDPA(q, k, v, attn_mask=mask)
        finally:
            _IN_SDPA[0] = False
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, *([] if bias is None else [bias]))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("planning only")


def _fused_sdpa(q=None, k=None, v=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    if q is None:  # diffusers' dispatcher passes query=, key=, value=
        q, k, v = kwargs["query"], kwargs["key"], kwargs["value"]
    bias = None
    if attn_mask is not None:  # a boolean mask becomes a materialised additive bias that backward reads
        shape = torch.broadcast_shapes(attn_mask.shape, (*q.shape[:-1], k.shape[-2]))[-2:]
        bias = torch.empty(shape, dtype=q.dtype, device=q.device)
    return _FusedSDPA.apply(q, k, v, attn_mask, bias)


class _BlockSparse(torch.autograd.Function):
    """Stands in for FlexAttention's history attention on meta: SDPA of each query group over the key groups the
    (G, G) mask allows (the FLOPs of the blocks flex computes, at group granularity), saving what flex saves for
    backward — q, k, v, output and fp32 log-sum-exp, no mask or bias."""

    @staticmethod
    def forward(ctx, q, k, v, mask_GG):
        G = mask_GG.shape[0]
        qs, ks, vs = (t.unflatten(2, (G, t.shape[2] // G)) for t in (q, k, v))  # (B, H, G, L, d)
        outs = []
        for g in range(G):
            allowed = mask_GG[g].nonzero().flatten().tolist()
            outs.append(_SDPA(qs[:, :, g], ks[:, :, allowed].flatten(2, 3), vs[:, :, allowed].flatten(2, 3)))
        out = torch.stack(outs, 2).flatten(2, 3)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("planning only")


def _planned_history_attention(q, k, v, mask_GG, key_mask=None):
    return _BlockSparse.apply(q, k, v, mask_GG.cpu())  # a key padding mask changes neither FLOPs nor saved bytes


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def student_pass(student: ARDStudent, states: torch.Tensor, cond: Condition) -> tuple[dict[str, int], int]:
    """One training forward on meta: the bytes it saves for backward (without and with activation checkpointing)
    and its FLOPs."""
    weights = {_storage_key(p) for p in student.parameters()}
    seen: set[int] = set()
    per_block = [0] * student.depth
    block_inputs = 0
    current = [None]
    total = [0]

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if key not in weights and key not in seen:
            seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            total[0] += nbytes
            if current[0] is not None:
                per_block[current[0]] += nbytes
        return t

    def enter(i):
        def hook(module, args, kwargs):
            nonlocal block_inputs
            current[0] = i
            # what activation checkpointing keeps of a block: its tensor inputs (MMDiT: text and image streams)
            inputs = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.dim() == 3]
            block_inputs += sum(a.untyped_storage().nbytes() for a in inputs[:2])

        return hook

    def leave(module, args, out):
        current[0] = None

    handles = []
    for i, block in enumerate(student.family.blocks(student.backbone)):
        handles += [block.register_forward_pre_hook(enter(i), with_kwargs=True), block.register_forward_hook(leave)]
    original, original_history = F.scaled_dot_product_attention, attention_module.history_attention
    F.scaled_dot_product_attention = _fused_sdpa
    attention_module.history_attention = _planned_history_attention
    try:
        with saved_tensors_hooks(pack, lambda t: t), FlopCounterMode(display=False) as flops:
            student(states, cond)
    finally:
        F.scaled_dot_product_attention, attention_module.history_attention = original, original_history
        for h in handles:
            h.remove()
    outside = total[0] - sum(per_block)
    saved = {"no_checkpointing": total[0], "checkpointing": outside + block_inputs + max(per_block)}
    return saved, flops.get_total_flops()


class _OutputBytes(TorchDispatchMode):
    """Sums the bytes of every op's outputs while `active` (an upper bound of what is live at once)."""

    def __init__(self):
        super().__init__()
        self.active, self.bytes = False, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.active and not _IN_SDPA[0]:
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


def inference_pass(blocks: nn.ModuleList, run) -> tuple[int, int]:
    """`run()` without grad on meta: the max over `blocks` of the bytes all the block's ops produce, and the FLOPs."""
    mode, sizes = _OutputBytes(), []

    def enter(module, args):
        mode.active, mode.bytes = True, 0

    def leave(module, args, out):
        mode.active = False
        sizes.append(mode.bytes)

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(enter), b.register_forward_hook(leave))]
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_sdpa  # inference kernels never materialise the probabilities either
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as flops, mode:
            run()
    finally:
        F.scaled_dot_product_attention = original
        for h in handles:
            h.remove()
    return max(sizes), flops.get_total_flops()


def qwen_encode_cost(model: nn.Module, batch: int, tokens: int, dtype) -> tuple[int, int]:
    """(working set bytes, FLOPs) of one encoder pass over `batch` captions of `tokens` tokens, derived rather than
    counted (Qwen2.5-VL's rotary embedding does not run on meta): 2 FLOPs per decoder weight per token (no LM head,
    `encode_qwen` stops at the hidden states) + causal attention, and a decoder layer's largest outputs (q, k, v, o,
    the gated MLP's three intermediates) as the working set."""
    c = model.config.text_config
    layers = model.model.language_model.layers
    per_layer = sum(p.numel() for p in layers[0].parameters())
    attention = 2 * 2 * tokens * tokens * c.hidden_size // 2  # QKᵀ and PV over the causal half
    flops = batch * c.num_hidden_layers * (2 * per_layer * tokens + attention)
    working = batch * tokens * (4 * c.hidden_size + 3 * c.intermediate_size) * dtype.itemsize
    return working, flops
