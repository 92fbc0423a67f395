"""ZeRO-aware exponential moving average of the student (DESIGN.md §2).

The EMA is kept in fp32 *per partition*, where the optimizer keeps the weights, and is never gathered to update:
- ZeRO-3: each rank averages only its own shard of every parameter (the 1-D `param.ds_tensor` layout, padding
  included), read from the optimizer's fp32 master partition when there is one (exact under bf16/fp16), else from
  `ds_tensor`. Memory: 4 bytes × parameters / ranks.
- ZeRO 0–2 (and plain modules): every rank averages the full parameter (its compute-dtype copy: under bf16 the
  EMA follows the bf16 weights, not the optimizer's fp32 fragments).

`update()` after each optimizer step: ema = decay·ema + (1 − decay)·param. `state_dict()` is per rank (the
checkpoint manager saves it in each rank's own file) and only loads into the same world size and ZeRO layout;
`full_state_dict()` gathers it (collective) into an fp32 dict keyed like `module.state_dict()`, which
`load_full_state_dict()` takes back on any world size. `swapped_in()` puts the EMA weights into the module for
evaluation or sampling (collective under ZeRO-3) and restores the raw weights on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ard_scale.errors import UserError


def _is_zero3(param: nn.Parameter) -> bool:
    return hasattr(param, "ds_tensor") and hasattr(param, "ds_id")


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DeepSpeed engine (an engine has `.module` and `.optimizer`), else the module itself."""
    return module.module if hasattr(module, "module") and hasattr(module, "zero_optimization_stage") else module


class ZeroEMA:
    """fp32 EMA of a module's parameters, stored per ZeRO partition (see the module docstring)."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise UserError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = _unwrap(module)
        self.decay = float(decay)
        self.num_updates = 0
        # Trainable parameters by their first name (shared parameters appear once), in module order; frozen ones
        # (a LoRA student's base weights) never change, so they are not averaged.
        self.params: dict[str, nn.Parameter] = {n: p for n, p in self.module.named_parameters() if p.requires_grad}
        self.zero3 = any(_is_zero3(p) for p in self.params.values())
        if self.zero3 and not all(_is_zero3(p) for p in self.params.values()):
            raise UserError("the module mixes ZeRO-3 partitioned and plain parameters; wrap all of it in one engine")
        for name, p in self.params.items():
            if self.zero3 and getattr(p, "ds_secondary_tensor", None) is not None:
                raise UserError(
                    f"{name}: ZeRO++ hierarchical partitioning (zero_hpz_partition_size > 1) is not supported"
                )
        with torch.no_grad():
            self.shadow: dict[str, torch.Tensor] = {
                n: self._source(p).detach().float().clone() for n, p in self.params.items()
            }

    # -- the update -------------------------------------------------------------------------------------------------
    def _source(self, param: nn.Parameter) -> torch.Tensor:
        """This rank's current value of `param` in the EMA's layout: a 1-D shard (ZeRO-3) or the full tensor."""
        if not self.zero3:
            return param.data
        if param.requires_grad and hasattr(param, "_z3_optimizer"):
            from deepspeed.utils import safe_get_local_fp32_param

            master = safe_get_local_fp32_param(param)  # fp32 master shard, same layout as ds_tensor
            if master is not None:
                return master.view(-1)
        return param.ds_tensor.data.view(-1)

    @torch.no_grad()
    def update(self) -> None:
        """ema = decay·ema + (1 − decay)·param, on this rank's partitions only. Call after every optimizer step."""
        shadows = list(self.shadow.values())
        sources = [
            self._source(self.params[n]).to(device=s.device, dtype=torch.float32) for n, s in self.shadow.items()
        ]
        torch._foreach_mul_(shadows, self.decay)
        torch._foreach_add_(shadows, sources, alpha=1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def restart(self) -> None:
        """Start the EMA again from the module's current weights (after resuming a checkpoint that has none)."""
        for name, shadow in self.shadow.items():
            shadow.copy_(self._source(self.params[name]).to(device=shadow.device, dtype=torch.float32))
        self.num_updates = 0

    # -- per-rank persistence ---------------------------------------------------------------------------------------
    def _layout(self) -> dict:
        world = dist.get_world_size() if dist.is_initialized() else 1
        return {"zero3": self.zero3, "world_size": world if self.zero3 else 1}

    def state_dict(self) -> dict:
        """This rank's EMA (shards under ZeRO-3), for the checkpoint manager to save in this rank's own file."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            **self._layout(),
            "shadow": {n: t.detach().clone() for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict()` returned on this rank (same parameters, ZeRO layout and world size)."""
        layout, saved_layout = self._layout(), {k: state.get(k) for k in ("zero3", "world_size")}
        if layout != saved_layout:
            raise UserError(
                f"EMA state was saved with {saved_layout}, this run has {layout}: per-rank EMA shards only load into "
                "the same layout; gather with full_state_dict() and use load_full_state_dict() to change it"
            )
        shadow = state["shadow"]
        missing, unexpected = sorted(set(self.shadow) - set(shadow)), sorted(set(shadow) - set(self.shadow))
        wrong = [n for n in self.shadow if n in shadow and shadow[n].shape != self.shadow[n].shape]
        if missing or unexpected or wrong:
            raise UserError(
                f"EMA state does not match the module: missing {missing}, unexpected {unexpected}, wrong shape {wrong}"
            )
        with torch.no_grad():
            for n, t in self.shadow.items():
                t.copy_(shadow[n])
        self.num_updates = int(state["num_updates"])

    # -- gathered views ---------------------------------------------------------------------------------------------
    def _gather(self, name: str) -> torch.Tensor:
        """The full fp32 EMA of one parameter (collective over its ZeRO-3 group)."""
        shard, param = self.shadow[name], self.params[name]
        if not self.zero3:
            return shard.detach().clone()
        group = param.ds_process_group
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(group=group))]
        dist.all_gather(parts, shard, group=group)
        return torch.cat(parts)[: param.ds_numel].view(param.ds_shape)

    @torch.no_grad()
    def full_state_dict(self, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The EMA as a full fp32 state dict keyed like `module.state_dict()` (buffers copied from the module).
        Collective under ZeRO-3: every rank calls it and every rank gets the whole dict."""
        full = {n: self._gather(n).to(device) for n in self.params}
        by_id = {id(p): n for n, p in self.params.items()}
        out = {}
        for key, value in self.module.state_dict(keep_vars=True).items():
            if id(value) in by_id:
                out[key] = full[by_id[id(value)]]
            else:  # a buffer: not averaged
                value = value.detach().to(device)
                out[key] = value.float().clone() if value.is_floating_point() else value.clone()
        return out

    @torch.no_grad()
    def load_full_state_dict(self, full: dict[str, torch.Tensor]) -> None:
        """Set the EMA from a full state dict (e.g. `full_state_dict()` of a run on another world size); each rank
        keeps its own partitions. Parameters missing from `full` are an error."""
        missing = [n for n in self.params if n not in full]
        if missing:
            raise UserError(f"full EMA state dict lacks parameters {missing}")
        for name, param in self.params.items():
            value = full[name].detach().to(device=self.shadow[name].device, dtype=torch.float32)
            expected = tuple(param.ds_shape) if self.zero3 else tuple(param.shape)
            if tuple(value.shape) != expected:
                raise UserError(f"{name}: full EMA tensor has shape {tuple(value.shape)}, the module has {expected}")
            if self.zero3:
                flat, size = value.reshape(-1), self.shadow[name].numel()
                rank = dist.get_rank(group=param.ds_process_group)
                piece = flat[rank * size : (rank + 1) * size]
                self.shadow[name].zero_()[: piece.numel()].copy_(piece)
            else:
                self.shadow[name].copy_(value)

    # -- evaluation with the EMA weights ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module | None = None) -> Iterator[nn.Module]:
        """Put the EMA weights into the module (or the engine wrapping it) for the block, then restore the raw ones.

        Under ZeRO-3 only the shards are swapped (no full copy of the model), and every rank must enter and leave
        together; parameters ZeRO-3 keeps gathered (small "persistent" ones, or ones cached between calls) are
        re-gathered from the swapped shards. Use it between optimizer steps, not inside a gradient accumulation."""
        if module is not None and _unwrap(module) is not self.module:
            raise UserError("swapped_in() takes the module this EMA tracks (or its engine), not another one")
        raw = {n: self._local(p).detach().clone() for n, p in self.params.items()}
        try:
            with torch.no_grad():
                for name, param in self.params.items():
                    self._local(param).copy_(self.shadow[name])
                self._refresh_gathered()
            yield self.module
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    self._local(param).copy_(raw[name])
                self._refresh_gathered()

    def _local(self, param: nn.Parameter) -> torch.Tensor:
        """The tensor the module's forward reads this rank's part of the weights from."""
        return param.ds_tensor.data.view(-1) if self.zero3 else param.data

    def _refresh_gathered(self) -> None:
        """ZeRO-3 parameters that are currently gathered still hold the old full values: re-gather them from the
        (just changed) shards, as DeepSpeed itself does for persistent parameters after loading a checkpoint."""
        if not self.zero3:
            return
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        gathered = [p for p in self.params.values() if p.ds_status == ZeroParamStatus.AVAILABLE]
        if gathered:
            gathered[0].partition(gathered)  # drops the stale full data (the shards are kept as they are)
            gathered[0].all_gather(gathered)
