"""webdataset tar shards (img2dataset layout) with a deterministic, resumable sample order.

Order. Epoch e lays the shards out in a permutation keyed on (seed, e) (identity without shuffle); the N
samples of that sequence are split into W contiguous, balanced rank spans, so each rank reads only ~1/W
of the bytes and every sample goes to exactly one rank per epoch. A rank's stream is its span of epoch
0, then of epoch 1, ...; a position p in it is a plain integer, and the cursor saved on resume is one.

Workers. Positions are cut into chunks of `chunk_size`; chunk j goes to worker j % num_workers. The
DataLoader returns worker outputs round-robin, so chunks arrive in order j = 0, 1, 2, ... whatever the
worker count: the stream the main process sees is the same with 0, 1 or 8 workers.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

import numpy as np
import torch

from ard_scale.data.samples import BadSample, decode_wds_sample
from ard_scale.data.shard_paths import is_remote, shard_urls
from ard_scale.errors import UserError


@dataclass(frozen=True, kw_only=True)
class Shard:
    """One tar shard and its number of samples (distinct keys)."""

    url: str
    num_samples: int


def _count_samples(path: str) -> int:
    """Distinct consecutive keys in a local tar (reads headers only)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            keys = [_split_name(m.name)[0] for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"webdataset shard {path!r} is not a readable tar ({e}); rebuild it or remove it") from e
    return sum(1 for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k)


def _split_name(name: str) -> tuple[str, str]:
    """'dir/000123.jpg' -> ('dir/000123', 'jpg'); the key ends at the first dot of the basename (webdataset's rule)."""
    dirname, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(dirname, stem), ext.lower()


def list_shards(path: str) -> list[Shard]:
    """Resolve a folder of .tar, a shards.json index, or a brace pattern to shards with sample counts."""
    shards = [Shard(url=url, num_samples=_count_samples(url) if n is None else n) for url, n in shard_urls(path)]
    for s in shards:
        if s.num_samples <= 0:
            raise UserError(f"webdataset shard {s.url!r} holds no samples; rebuild or remove it")
    return shards


class RankPlan:
    """Maps a rank's stream position to (epoch, shard index, offset in shard); pure function of its inputs."""

    def __init__(self, shards: list[Shard], *, rank: int, world_size: int, seed: int, shuffle: bool):
        if not 0 <= rank < world_size:
            raise UserError(f"rank={rank} must be in [0, world_size={world_size})")
        self.shards, self.seed, self.shuffle = shards, seed, shuffle
        self.num_total = sum(s.num_samples for s in shards)
        if self.num_total < world_size:
            raise UserError(f"{self.num_total} samples cannot be split over world_size={world_size} ranks")
        self.span_start = rank * self.num_total // world_size
        self.num_per_epoch = (rank + 1) * self.num_total // world_size - self.span_start
        self._epoch, self._order, self._starts = -1, None, None

    def order(self, epoch: int) -> np.ndarray:
        """Shard indices in epoch order, keyed on (seed, epoch)."""
        if epoch != self._epoch:
            n = len(self.shards)
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._starts = np.cumsum([0] + [self.shards[i].num_samples for i in self._order])
            self._epoch = epoch
        return self._order

    def locate(self, position: int) -> tuple[int, int, int]:
        """Stream position -> (epoch, shard index, sample offset in that shard)."""
        epoch, index = divmod(position, self.num_per_epoch)
        order = self.order(epoch)
        global_index = self.span_start + index
        slot = int(np.searchsorted(self._starts, global_index, side="right")) - 1
        return epoch, int(order[slot]), int(global_index - self._starts[slot])


class TarReader:
    """Reads one shard front to back; `read(offset)` returns that sample's {ext: bytes}, skipping the bytes
    of samples before it (a seek for local files)."""

    def __init__(self, url: str):
        self.url = url
        if is_remote(url):
            from webdataset.gopen import gopen  # streams http(s)://, pipe:, s3 via curl/aws, ...

            self._tar = tarfile.open(fileobj=gopen(url, "rb"), mode="r|*")
        else:
            try:
                self._tar = tarfile.open(url, "r:*")  # plain or gzip-compressed
            except (tarfile.TarError, OSError, EOFError) as e:
                self._tar, self._pending, self.offset = None, None, -1
                self._error = f"unreadable shard ({type(e).__name__})"
                return
        self.offset = -1  # offset of the sample whose first member is `self._pending`
        self._pending = None  # next member not yet consumed
        self._error: str | None = None
        self._advance_member()

    def _advance_member(self) -> None:
        try:
            member = self._tar.next()
            while member is not None and not member.isfile():
                member = self._tar.next()
        except (tarfile.TarError, OSError, EOFError) as e:
            self._error, member = f"truncated or corrupt shard ({type(e).__name__})", None
        if member is not None and (self._pending is None or _split_name(member.name)[0] != self._key):
            self.offset += 1
        self._pending = member
        if member is not None:
            self._key = _split_name(member.name)[0]

    def read(self, offset: int, want: bool) -> tuple[str, dict[str, bytes]]:
        """Advance to sample `offset`; return (key, fields), fields empty if not `want`. Raises BadSample."""
        assert offset >= self.offset, "TarReader moves forward only"
        while self._pending is not None and self.offset < offset:
            self._advance_member()
        if self._pending is None:
            raise BadSample(self._error or "sample missing from shard (shard shorter than its index says)")
        key, fields = self._key, {}
        while self._pending is not None and self.offset == offset:
            name, ext = _split_name(self._pending.name)
            if want:
                try:
                    fields[ext] = self._tar.extractfile(self._pending).read()
                except (tarfile.TarError, OSError, EOFError) as e:
                    self._error = f"truncated or corrupt shard ({type(e).__name__})"
                    raise BadSample(self._error) from e
            self._advance_member()
        return os.path.basename(key), fields

    @property
    def has_more(self) -> bool:
        """A sample follows the last one read."""
        return self._pending is not None

    def index_mismatch(self, offset: int, num_samples: int) -> str | None:
        """After a read at `offset`: what shows that the shard does not hold the `num_samples` its index lists (the
        last listed sample is followed by more, or the tar ended cleanly before `offset`), else None."""
        if offset == num_samples - 1 and self._pending is not None and self.offset > offset:
            return f"holds more samples than the {num_samples} its index lists: the rest are never read"
        if self._pending is None and self._error is None and self._tar is not None and self.offset < offset:
            return f"holds {self.offset + 1} samples, fewer than the {num_samples} its index lists"
        return None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


class WdsChunks(torch.utils.data.IterableDataset):
    """Yields chunk j = positions [start + j*C, start + (j+1)*C) (clipped to `stop`) on worker j % workers:
    {"chunk": j, "positions", "shards", "keys", "samples", "miscounted"} where samples[i] is a decoded sample or a
    skip reason (str), keys[i] its key in the tar (None where the tar broke off before it), and miscounted lists
    (shard index, what was seen) for each shard found to hold another number of samples than its index says (seen
    only where a shard is read to its end: nothing is re-read to check)."""

    def __init__(self, plan: RankPlan, *, start: int, stop: int | None, chunk_size: int, done: set[int], decode_kwargs):
        self.plan, self.start, self.stop, self.chunk_size = plan, start, stop, chunk_size
        self.done, self.decode_kwargs = done, decode_kwargs

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        reader: TarReader | None = None
        reader_key = None
        j = worker
        try:
            while True:
                lo = self.start + j * self.chunk_size
                hi = lo + self.chunk_size if self.stop is None else min(lo + self.chunk_size, self.stop)
                if lo >= hi:
                    return
                chunk = {"chunk": j, "positions": list(range(lo, hi)), "shards": [], "keys": [], "samples": [],
                         "miscounted": []}  # fmt: skip
                for position in range(lo, hi):
                    epoch, shard_index, offset = self.plan.locate(position)
                    url = self.plan.shards[shard_index].url
                    chunk["shards"].append((epoch, shard_index))
                    if reader is None or reader_key != (epoch, shard_index) or reader.offset > offset:
                        if reader is not None:
                            reader.close()
                        reader, reader_key = TarReader(url), (epoch, shard_index)
                    want = position not in self.done
                    key = None
                    try:
                        key, fields = reader.read(offset, want)
                        sample = decode_wds_sample(key, fields, **self.decode_kwargs) if want else None
                    except BadSample as e:
                        sample = str(e)
                    mismatch = reader.index_mismatch(offset, self.plan.shards[shard_index].num_samples)
                    if mismatch is not None and (shard_index, mismatch) not in chunk["miscounted"]:
                        chunk["miscounted"].append((shard_index, mismatch))
                    chunk["keys"].append(key)
                    chunk["samples"].append(sample)
                yield chunk
                j += num_workers
        finally:
            if reader is not None:
                reader.close()
