"""The evaluation component (STYLE.md 7): `should_run(step)` and `run(generate_fn) -> dict[str, float]`.

Generation is split across ranks — every rank generates its share and every rank makes the same number of
`generate_fn` calls, because under ZeRO-3 each forward is a collective (rank-0-only generation deadlocks). Samples are
identified by a global index, so a `generate_fn` that keys prompts and noise on the index gives the same images on
any number of ranks. Metric statistics are combined with an injected `gather` (all_gather + concatenate along dim 0;
`dist_gather` for a process group, None on one process), so the arithmetic is testable in one process.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from ard_scale.config import EvalConfig
from ard_scale.errors import UserError

if TYPE_CHECKING:  # annotations only: importing the evaluator does not pull in torchmetrics or open_clip
    from ard_scale.evaluation.clip_score import CLIPScore
    from ard_scale.evaluation.fid import FID

# generate_fn(indices (B,) global sample ids) -> (images float [0, 1] (B, 3, H, W), captions or None)
GenerateFn = Callable[[torch.Tensor], tuple[torch.Tensor, Sequence[str] | None]]
Gather = Callable[[torch.Tensor], torch.Tensor]


def dist_gather(t: torch.Tensor) -> torch.Tensor:
    """all_gather of same-shaped tensors, concatenated along dim 0 in rank order (identity without a group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from ard_scale.distributed.collectives import collective_device

    device = collective_device(dist.get_backend())  # NCCL gathers CUDA tensors only, gloo CPU ones
    out = [torch.empty_like(t, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous().to(device))
    return torch.cat(out).to(t.device)


def rank_batches(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[tuple[torch.Tensor, int]]:
    """This rank's batches as (global indices (batch_size,), number of valid leading entries). Every rank gets the
    same number of full-size batches; indices past its share repeat its last valid one (or 0) and are discarded."""
    per_rank = math.ceil(num_samples / world_size)
    start, stop = min(rank * per_rank, num_samples), min((rank + 1) * per_rank, num_samples)
    mine = torch.arange(start, stop)
    out = []
    for b in range(math.ceil(per_rank / batch_size)):
        valid = mine[b * batch_size : (b + 1) * batch_size]
        pad_value = int(valid[-1]) if len(valid) else (int(mine[-1]) if len(mine) else 0)
        pad = torch.full((batch_size - len(valid),), pad_value, dtype=torch.long)
        out.append((torch.cat([valid, pad]), len(valid)))
    return out


@torch.no_grad()
def generate_all(
    generate_fn: GenerateFn,
    num: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    gather: Gather | None = None,
) -> torch.Tensor:
    """Images 0 … num-1 (num, 3, H, W) on every rank, each generated once, split across ranks (every rank makes the
    same number of `generate_fn` calls) and gathered with `gather` (all_gather + concatenate; collective)."""
    if world_size > 1 and gather is None:
        raise UserError(f"world_size={world_size} needs a gather (e.g. evaluation.evaluator.dist_gather)")
    batches = rank_batches(num, batch_size, rank, world_size)
    images, indices = [], []
    for idx, num_valid in batches:
        images.append(generate_fn(idx)[0])
        indices.append(torch.where(torch.arange(len(idx)) < num_valid, idx, -1))  # -1: padding, dropped below
    images_N, indices_N = torch.cat(images), torch.cat(indices)
    if gather is not None:
        images_N = gather(images_N.contiguous())
        indices_N = gather(indices_N.to(images_N.device)).cpu()
    keep = indices_N >= 0
    order = torch.argsort(indices_N[keep])
    out = images_N[keep.to(images_N.device)][order.to(images_N.device)]
    assert out.shape[0] == num, (out.shape, num)
    return out


class Evaluator:
    """FID and/or CLIP score of `cfg.num_samples` generated images, every `cfg.every` steps."""

    def __init__(
        self,
        cfg: EvalConfig,
        *,
        fid: FID | None = None,
        clip: CLIPScore | None = None,
        rank: int = 0,
        world_size: int = 1,
        gather: Gather | None = None,
    ) -> None:
        if world_size > 1 and gather is None:
            raise UserError(f"world_size={world_size} needs a gather (e.g. evaluation.evaluator.dist_gather)")
        self.cfg, self.fid, self.clip = cfg, fid, clip
        self.rank, self.world_size, self.gather = rank, world_size, gather

    def should_run(self, step: int) -> bool:
        return self.cfg.every is not None and step > 0 and step % self.cfg.every == 0

    @torch.no_grad()
    def run(self, generate_fn: GenerateFn) -> dict[str, float]:
        """Generate this rank's share, update the metrics, combine across ranks; the same dict on every rank. Any
        sample with a NaN/Inf pixel makes every metric NaN (null in metrics.jsonl) with a warning: scored as the
        black or white image uint8 would make of it, it gives a number that measures nothing."""
        for metric in (self.fid, self.clip):
            if metric is not None:
                metric.reset()
        num_nonfinite = 0
        for indices, num_valid in rank_batches(self.cfg.num_samples, self.cfg.batch_size, self.rank, self.world_size):
            images, captions = generate_fn(indices)  # called on every rank, padded batches included
            if num_valid == 0:
                continue
            images = images[:num_valid]
            num_nonfinite += int((~images.isfinite()).flatten(1).any(1).sum())
            if self.fid is not None:
                self.fid.update(images)
            if self.clip is not None:
                if captions is None:
                    raise UserError("CLIP score needs captions: generate_fn returned None (class-conditional model?)")
                self.clip.update(images, list(captions)[:num_valid])
        out = {"num_samples": float(self.cfg.num_samples)}
        counts_11 = torch.tensor([[float(num_nonfinite)]], dtype=torch.float64)
        num_nonfinite = int(self.gather(counts_11).sum()) if self.gather is not None else num_nonfinite  # collective
        if num_nonfinite:
            if self.rank == 0:
                warnings.warn(
                    f"evaluation: {num_nonfinite} of {self.cfg.num_samples} generated images hold NaN/Inf pixels, so "
                    "FID and CLIP score are NaN (null in metrics.jsonl): the sampler overflowed or its weights are not "
                    "finite; check loss and grad_norm in metrics.jsonl (launchers/eval.py samples checkpoints in fp32)",
                    stacklevel=2,
                )
            out.update({k: math.nan for k, m in (("fid", self.fid), ("clip_score", self.clip)) if m is not None})
            return out
        if self.fid is not None:
            out["fid"] = self.fid.compute(self.gather)
        if self.clip is not None:
            out["clip_score"] = self.clip.compute(self.gather)
        return out
