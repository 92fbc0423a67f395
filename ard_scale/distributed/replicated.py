"""A small trainable module kept whole on every rank, beside the ZeRO-3 student (DESIGN.md §2).

Used for the GAN discriminator heads. Why not a DeepSpeed engine of their own: the heads are a few MB, so sharding
buys nothing; a second engine's gradient-reduction hooks would fire inside the student's backward whenever the heads
take part in the generator's graph (DESIGN.md §3: reduced twice, it asserts), and its checkpoint would be a second
set of files to publish atomically with the student's. Here instead:

- every rank starts from rank 0's parameters (`broadcast`), so the copies start equal;
- `step()` averages the gradients with one all-reduce at a point every rank reaches, clips, steps the optimizer and
  zeroes the gradients: the copies stay bit-identical across ranks, with no hooks involved;
- the state (parameters, optimizer, spectral-norm buffers) is the same on every rank, so it travels in the
  checkpoint's global `client_state`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class ReplicatedModule:
    def __init__(self, module: nn.Module, *, lr: float, betas=(0.0, 0.99), weight_decay: float = 0.0, grad_clip=None):
        self.module = module
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        self.broadcast()

    def broadcast(self) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if dist.is_initialized() and dist.get_world_size() > 1:
            with torch.no_grad():
                for t in list(self.module.parameters()) + list(self.module.buffers()):
                    dist.broadcast(t.data, src=0)

    def step(self) -> float:
        """Average gradients over ranks, clip, step, zero. Collective. Returns the (pre-clip) gradient norm."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.module.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Parameters and optimizer moments from `state`; the learning rate, betas and weight decay stay this run's
        (torch's `load_state_dict` would put back the saved ones, so a resume with a changed `gan.d_lr` or
        `gan.d_betas` would silently keep the old)."""
        configured = [{k: g[k] for k in ("lr", "betas", "weight_decay")} for g in self.optimizer.param_groups]
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, configured, strict=True):
            group.update(settings)
