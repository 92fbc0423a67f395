"""The `data` section: where the image shards (and offline trajectories) live and how batches are drawn.

One class for the recipe and the readers (ard_scale/data): the readers take this section as it is and check it with
`check_readable` when it was built in code rather than loaded from a recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ard_scale.config.loader import BATCH, SEED, ConfigError, Range, check


@dataclass(kw_only=True)
class DataConfig:
    """Streamed training shards: images with captions (or class labels), and optionally offline trajectories.

    Field names follow the data readers (ard_scale/data), which receive this section."""

    format: Literal["webdataset", "mds"]
    """Shard format: webdataset tars (img2dataset layout) or mosaicml-streaming MDS."""
    path: str | None = None
    """Image shards. webdataset: a folder of .tar, a shard index .json, or a brace pattern; MDS: a local folder or
    remote URL. Gives the conditions for online trajectories and the real images for the GAN; may be null only
    with train.trajectory_source='offline' and no GAN."""
    trajectory_path: str | None = None
    """Offline teacher-trajectory MDS shards, for train.trajectory_source='offline'."""
    resolution: int
    """Square side after resize + center crop; with `buckets`, the bucket table's base side (e.g. 1024)."""
    batch_size: int
    """Samples per rank per micro-step (global batch = batch_size × ranks × train.grad_accum)."""
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
    """Epochs to iterate; null streams forever (the trainer stops at train.max_steps)."""
    chunk_size: int = 16
    """webdataset: consecutive samples one worker decodes as a unit."""
    cache_dir: str | None = None
    """MDS with a remote `path`: a local cache folder unique to this job."""
    num_canonical_nodes: int | None = None
    """MDS: canonical node count; keep it fixed across resumes (null = the first run's node count)."""
    local_world_size: int | None = None
    """MDS: ranks per node (null = LOCAL_WORLD_SIZE, else world size)."""

    PATHS: ClassVar[tuple[str, ...]] = ("path", "trajectory_path", "cache_dir")  # ~, $VAR: config.loader.expand_path
    BOUNDS: ClassVar[dict[str, Range]] = {
        "resolution": Range(8, 16384),
        "batch_size": BATCH,
        "num_workers": Range(0, 1024),
        "prefetch_factor": Range(1, 1024),
        "seed": SEED,
        "num_epochs": Range(1, 10**6),
        "chunk_size": Range(1, 2**16),
        "num_canonical_nodes": Range(1, 2**20),
        "local_world_size": Range(1, 1024),
    }

    def problems(self) -> list[str]:
        out = []
        if self.resolution % 8:
            out.append(f"resolution: must be a multiple of 8, got {self.resolution}")
        if self.buckets and self.format == "mds":
            out.append(MDS_BUCKETS)
        return out


MDS_BUCKETS = (
    "buckets: true needs format 'webdataset': MDS resume state is one global sample count, which per-rank bucket "
    "buffers cannot express; use fixed-resolution MDS (buckets: false) or webdataset shards"
)


def check_readable(config: DataConfig, path_key: str = "path") -> DataConfig:
    """`config` checked as a recipe's data section, with the shard folder `config.<path_key>` set (readers need it),
    and returned as a recipe's would be read (`~` and `$VAR` in its paths expanded); raises ConfigError naming each
    problem."""
    config = check(config, "data")
    if getattr(config, path_key) is None:
        raise ConfigError("data section", [f"data.{path_key}: required to read shards (a folder, index or URL)"])
    return config
