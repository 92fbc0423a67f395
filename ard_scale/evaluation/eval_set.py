"""What an evaluation is made of besides the model: its prompts, the real images behind the FID reference statistics,
and the keys that name cached results.

- Prompts: a text file (one prompt a line), or the captions of the recipe's data shards in storage order.
- Reference statistics from a shard set: the first `num_images` decodable images in storage order (independent of
  the number of ranks: each rank features its slice, the sums are gathered), cached as an `.npz` keyed on what
  defines them.
- Cache keys: a stable hash of a JSON-able description; files enter it by identity (resolved path, size, mtime),
  so replacing a weights file invalidates what was computed with it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ard_scale.errors import UserError
from ard_scale.evaluation.evaluator import Gather

if TYPE_CHECKING:  # importing the evaluation set does not pull in torchmetrics
    from ard_scale.evaluation.fid import FID, ReferenceStats


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Non-empty, stripped lines of a prompt file (eval.prompts_path)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {str(path)!r} (eval.prompts_path) not found; give a text file, one prompt a line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompt file {str(path)!r} (eval.prompts_path) holds no prompt; write one prompt a line")
    return prompts


def iter_real_samples(path: str, format: str, resolution: int) -> Iterator[dict]:
    """Decoded samples (image (3, H, W) in [-1, 1], caption, label) of a local shard set, in storage order; corrupt
    samples are skipped, as the training loaders skip them."""
    from ard_scale.data.samples import BadSample, decode_sample
    from ard_scale.data.sources import iter_shard_set

    if "://" in path:
        raise UserError(
            f"evaluation reads real images and captions from local shards, but data.path is remote ({path!r}); "
            "give eval.fid_reference_path (an .npz) and eval.prompts_path instead"
        )
    for raw in iter_shard_set(path, format):
        try:
            yield decode_sample(
                raw["key"], raw["image"], raw["caption"], resolution=resolution, table=None, label=raw["label"]
            )
        except BadSample:
            continue


def data_captions(path: str, format: str, num: int) -> list[str]:
    """The first `num` captions of a local shard set (fewer if it holds fewer); an empty set is an error."""
    from ard_scale.data.sources import iter_shard_set

    captions = [s["caption"] for s in itertools.islice(iter_shard_set(path, format), num) if s["caption"]]
    if not captions:
        raise UserError(f"the shard set {path!r} has no captions to prompt the evaluation with; set eval.prompts_path")
    return captions


@torch.no_grad()
def reference_stats_from_shards(
    fid: FID,
    path: str,
    format: str,
    *,
    resolution: int,
    num_images: int,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    gather: Gather | None = None,
) -> ReferenceStats:
    """FID reference statistics of the first `num_images` real images of a shard set. Every rank reads the same
    stream and features only its contiguous slice; the float64 sums are combined with `gather` (collective: every
    rank calls it), so the result does not depend on the number of ranks."""
    from ard_scale.evaluation.fid import ReferenceStats

    per_rank = -(-num_images // world_size)
    start, stop = rank * per_rank, min((rank + 1) * per_rank, num_images)
    f = fid.num_features
    total = torch.zeros(f, dtype=torch.float64)
    outer = torch.zeros(f, f, dtype=torch.float64)
    count = 0
    images = (s["image"] for s in iter_real_samples(path, format, resolution))
    seen = 0
    for batch in _batched(itertools.islice(images, num_images), batch_size):
        lo, hi = max(start - seen, 0), min(stop - seen, len(batch))
        seen += len(batch)
        if lo >= hi:
            continue
        feats = fid.features((torch.stack(batch[lo:hi]) + 1) / 2).double().cpu()
        total += feats.sum(0)
        outer += feats.T @ feats
        count += feats.shape[0]
    if seen < 2:
        raise UserError(f"the shard set {path!r} has {seen} decodable images; FID reference statistics need >= 2")
    if seen < num_images and rank == 0:
        warnings.warn(
            f"FID reference statistics from the {seen} images of {path!r}, fewer than the {num_images} asked for "
            f"(eval.fid_reference_num_images): an FID against so few reference images runs high. Give a larger shard "
            f"set, or set eval.fid_reference_num_images={seen} so the recipe says what the number is measured against",
            stacklevel=2,
        )
    sums = torch.cat([total, outer.flatten(), torch.tensor([float(count)], dtype=torch.float64)])[None]
    if gather is not None:
        sums = gather(sums.to(fid.device)).cpu().sum(0, keepdim=True)
    total, outer, n = sums[0, :f], sums[0, f : f + f * f].view(f, f), float(sums[0, -1])
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return ReferenceStats(mu=mu.numpy(), sigma=sigma.numpy())


def _batched(items, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def file_identity(path: str | os.PathLike | None) -> dict | None:
    """What names a file's content cheaply: resolved path, size and modification time (None stays None)."""
    if path is None:
        return None
    p = Path(path).resolve()
    if p.is_dir():  # a model folder: every file in it
        return {"path": str(p), "files": {str(f.relative_to(p)): file_identity(f) for f in sorted(p.rglob("*"))
                                          if f.is_file()}}  # fmt: skip
    if not p.is_file():
        return {"path": str(p), "missing": True}
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(description: dict) -> str:
    """16 hex digits naming a JSON-able description (key order does not matter)."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write `data` as JSON atomically (a reader sees the old file or the whole new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict | None:
    """The dict `write_json` stored at `path`, or None when there is none."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
