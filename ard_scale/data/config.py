"""Data configuration (self-contained; the config tree will import it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class DataConfig:
    """Where the image–caption shards live and how batches are drawn from them."""

    format: Literal["webdataset", "mds"]
    """Shard format: webdataset tars (img2dataset layout) or mosaicml-streaming MDS."""
    path: str
    """webdataset: a folder of .tar, a shard index .json, or a brace pattern; MDS: a local folder or remote URL."""
    batch_size: int
    """Samples per batch on this rank."""
    resolution: int = 256
    """Square side after resize + center crop; with `buckets`, the bucket table's base side (e.g. 1024)."""
    buckets: bool = False
    """Aspect-ratio buckets (PixArt-Σ table scaled to `resolution`); every batch comes from one bucket."""
    num_workers: int = 2
    """DataLoader worker processes per rank (decode + resize run there)."""
    prefetch_factor: int = 2
    """Chunks each worker prepares ahead."""
    seed: int = 0
    """Shuffle seed; the order is a pure function of (seed, epoch), identical on every rank."""
    shuffle: bool = True
    """Shuffle shard order (webdataset) or samples (MDS) every epoch."""
    num_epochs: int | None = None
    """Epochs to iterate; None streams forever (the trainer stops on its step count)."""
    chunk_size: int = 8
    """webdataset: consecutive samples one worker decodes as a unit (8 x 1024px float images = 100 MB)."""
    cache_dir: str | None = None
    """MDS with a remote `path`: a local cache folder unique to this job."""
    num_canonical_nodes: int | None = None
    """MDS: canonical node count; keep it fixed across resumes (defaults to the first run's node count)."""
    local_world_size: int | None = None
    """MDS: ranks per node (defaults to LOCAL_WORLD_SIZE, else world_size)."""

    def __post_init__(self) -> None:
        if self.format not in ("webdataset", "mds"):
            raise ValueError(f"data.format={self.format!r} is not a shard format; use 'webdataset' or 'mds'")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size={self.batch_size} must be >= 1")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"data.resolution={self.resolution} must be a positive multiple of 8")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")
        if self.chunk_size < 1:
            raise ValueError(f"data.chunk_size={self.chunk_size} must be >= 1")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"data.num_epochs={self.num_epochs} must be >= 1 or None (stream forever)")
