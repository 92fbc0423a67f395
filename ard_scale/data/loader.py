"""The loaders the trainer iterates: batches, exact resume state, skip counter."""

from __future__ import annotations

import dataclasses
import warnings

import torch

from ard_scale.config.data import DataConfig, check_readable
from ard_scale.data.bundled import resolve_data_path
from ard_scale.data.samples import SkipCounter, SkipWarnings, collate
from ard_scale.data.shard_paths import index_file
from ard_scale.data.transforms import bucket_table
from ard_scale.data.wds import RankPlan, WdsChunks, list_shards
from ard_scale.errors import UserError


def _identity(chunk: dict) -> dict:
    return chunk


class WebdatasetLoader:
    """Batches from webdataset tars for one rank; exact resume from a per-rank cursor.

    Samples are consumed in stream order (see wds.py) and grouped by bucket in this process; a batch is
    emitted when its bucket holds `batch_size` samples (one bucket when `buckets` is off, so batches are
    consecutive samples). The state is (cursor, done): the cursor is the earliest position not yet fully
    consumed (the oldest sample still waiting in a bucket), `done` the positions after it already emitted
    or skipped. A resumed loader re-reads from the cursor and drops `done`, which rebuilds the bucket
    buffers exactly, so every later batch equals the uninterrupted run's.
    """

    def __init__(self, config: DataConfig, *, rank: int, world_size: int):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.shards = list_shards(config.path)
        self.plan = RankPlan(self.shards, rank=rank, world_size=world_size, seed=config.seed, shuffle=config.shuffle)
        self.table = bucket_table(config.resolution) if config.buckets else None
        self.position = 0
        self.done: list[int] = []
        self.skips = SkipCounter()
        self.skip_warnings = SkipWarnings()
        self._miscounted: set[str] = set()  # shards already warned about for a wrong index count
        self.num_samples_yielded = 0

    @property
    def num_skipped(self) -> int:
        """Corrupt or incomplete samples skipped so far on this rank (as of the last batch yielded)."""
        return self.skips.total

    @property
    def stop(self) -> int | None:
        """Stream position where iteration ends (None: forever)."""
        return None if self.config.num_epochs is None else self.config.num_epochs * self.plan.num_per_epoch

    def max_batches(self) -> int | None:
        """An upper bound on the batches this rank yields (None: it streams forever); skipped samples make it fewer.
        One bucket: full batches, then one short batch at the end; with buckets, each may end on a short one."""
        if self.stop is None:
            return None
        num_buckets = len(self.table) if self.table is not None else 1
        return min(self.stop, self.stop // self.config.batch_size + num_buckets)

    def _dataloader(self, done: set[int]) -> torch.utils.data.DataLoader:
        chunks = WdsChunks(
            self.plan,
            start=self.position,
            stop=self.stop,
            chunk_size=self.config.chunk_size,
            done=done,
            decode_kwargs={"resolution": self.config.resolution, "table": self.table},
        )
        workers = self.config.num_workers
        return torch.utils.data.DataLoader(
            chunks,
            batch_size=None,
            num_workers=workers,
            prefetch_factor=self.config.prefetch_factor if workers else None,
            collate_fn=_identity,
        )

    def __iter__(self):
        batch_size = self.config.batch_size
        done = set(self.done)
        skips = SkipCounter(self.skips.counts)
        buffers: dict[tuple[int, int], list[tuple[int, dict]]] = {}
        shard_stats: dict[tuple[int, int], list[int]] = {}  # (epoch, shard) -> [seen, good] on this rank
        epoch_stats: dict[int, list[int]] = {}  # epoch -> [seen, good] on this rank

        def snapshot(next_position: int) -> None:
            self.position = min([b[0][0] for b in buffers.values()] + [next_position])
            done.difference_update([d for d in done if d < self.position])
            self.done, self.skips = sorted(done), SkipCounter(skips.counts)

        for expected, chunk in enumerate(self._dataloader(set(done))):
            assert chunk["chunk"] == expected, "chunks must arrive in order"
            for shard_index, mismatch in chunk["miscounted"]:
                self._warn_miscounted(shard_index, mismatch)
            rows = zip(chunk["positions"], chunk["shards"], chunk["keys"], chunk["samples"], strict=True)
            for position, shard_key, key, sample in rows:
                stats = shard_stats.setdefault(shard_key, [0, 0])
                in_epoch = epoch_stats.setdefault(shard_key[0], [0, 0])
                stats[0] += 1
                in_epoch[0] += 1
                if position in done:
                    stats[1] += 1  # consumed before the resume; it counted then
                    in_epoch[1] += 1
                elif isinstance(sample, str):
                    skips.add(sample)
                    done.add(position)
                    self.skip_warnings.warn(self.shards[shard_key[1]].url, self.plan.locate(position)[2], key, sample)
                else:
                    stats[1] += 1
                    in_epoch[1] += 1
                    bucket = buffers.setdefault(tuple(sample["image"].shape[1:]), [])
                    bucket.append((position, sample))
                    if len(bucket) == batch_size:
                        del buffers[tuple(sample["image"].shape[1:])]
                        done.update(p for p, _ in bucket)
                        snapshot(position + 1)
                        self.num_samples_yielded += batch_size
                        yield collate([s for _, s in bucket])
                # a shard split between ranks may hold its valid samples in another rank's part: only a shard this
                # rank reads whole this epoch is known to yield nothing
                shard = self.shards[shard_key[1]]
                if stats[1] == 0 and stats[0] == shard.num_samples:
                    raise UserError(
                        f"webdataset shard {shard.url!r} has no valid sample (all {stats[0]} read on rank {self.rank} "
                        f"were skipped: {dict(skips.counts)}); rebuild or remove it"
                    )
                if in_epoch[1] == 0 and in_epoch[0] == self.plan.num_per_epoch:  # else it would skip forever
                    urls = sorted({self.shards[i].url for e, i in shard_stats if e == shard_key[0]})
                    raise UserError(
                        f"rank {self.rank} read no valid sample in epoch {shard_key[0]}: its part of webdataset shards "
                        f"{urls} was all skipped ({dict(skips.counts)}); rebuild or remove them"
                    )
        # Finite run: flush partial buckets in the order their oldest sample arrived; the state (and skip counter)
        # as of each flushed batch includes everything read before it.
        for shape, bucket in sorted(buffers.items(), key=lambda item: item[1][0][0]):
            del buffers[shape]
            done.update(p for p, _ in bucket)
            snapshot(self.stop)
            self.num_samples_yielded += len(bucket)
            yield collate([s for _, s in bucket])
        snapshot(self.stop)

    def _warn_miscounted(self, shard_index: int, mismatch: str) -> None:
        """Once per shard: its index's sample count is wrong (a stale or hand-edited index: the folder's shards.json
        or the .json data.path names), so samples are lost (a tar longer than listed) or skipped as missing
        (shorter)."""
        url = self.shards[shard_index].url
        if url in self._miscounted:
            return
        self._miscounted.add(url)
        index = index_file(self.config.path)
        if index != self.config.path:  # data.path is the folder: without its index the tars are counted
            fix = f"delete {index} so that the tars are counted at start-up"
        else:  # data.path names the index itself, which it cannot do without
            fix = f"correct the shard's nsamples in {index}"
        warnings.warn(
            f"webdataset shard {url} {mismatch}: its index ({index}) is stale; rebuild the shards with "
            f"launchers/build_shards.py, or {fix}",
            stacklevel=2,
        )

    def state_dict(self) -> dict:
        """This rank's position as of the last batch yielded (small, picklable). Save one per rank."""
        return {
            "format": "webdataset",
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.config.seed,
            "num_total": self.plan.num_total,
            "position": self.position,
            "done": list(self.done),
            "skipped": dict(self.skips.counts),
            "num_samples_yielded": self.num_samples_yielded,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from this rank's `state_dict()`; the next iteration continues exactly where it stopped."""
        expected = {"format": "webdataset", "rank": self.rank, "world_size": self.world_size,
                    "seed": self.config.seed, "num_total": self.plan.num_total}  # fmt: skip
        differing = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if differing:
            raise UserError(
                f"webdataset loader state does not match this run: {differing} (saved, now); exact resume needs "
                "the same shards, seed, rank and world size — load each rank's own state"
            )
        self.position, self.done = int(state["position"]), [int(d) for d in state["done"]]
        self.skips = SkipCounter(state["skipped"])
        self.num_samples_yielded = int(state["num_samples_yielded"])


def build_loader(config: DataConfig, *, rank: int, world_size: int):
    """The loader for `config.format` on this rank: iterate for batches; state_dict/load_state_dict; num_skipped."""
    config = check_readable(config)  # its paths expanded as a recipe's (`~`, `$VAR`)
    config = dataclasses.replace(config, path=resolve_data_path(config.path))
    if config.format == "webdataset":
        return WebdatasetLoader(config, rank=rank, world_size=world_size)
    from ard_scale.data.mds import MDSLoader

    return MDSLoader(config, rank=rank, world_size=world_size)
