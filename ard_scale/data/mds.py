"""MDS shards through mosaicml-streaming, resumed with the stream's own state.

Streaming's rules, followed here: the same shuffle seed and the same `num_canonical_nodes` on every rank
and across resumes (both are part of the saved state), ranks step in lockstep (one batch per rank per
step, which the trainer does), and each job uses its own local cache folder. Rank and world size come in
as arguments and are exported as the variables streaming reads, and the dataset is built under the host-wide
registration lock (streaming_world.py); torch.distributed is never touched.
"""

from __future__ import annotations

import math
import os
from typing import Any

from streaming import StreamingDataLoader, StreamingDataset

from ard_scale.config.data import MDS_BUCKETS, DataConfig
from ard_scale.data.samples import NO_LABEL, BadSample, SkipCounter, SkipWarnings, collate, decode_sample
from ard_scale.data.shard_paths import check_mds_folder, is_remote
from ard_scale.data.streaming_world import streaming_build
from ard_scale.errors import UserError

# + optional label: int, t5_emb/t5_mask/pooled_emb: ndarray
COLUMNS = {"key": "str", "image": "bytes", "caption": "str"}


def shard_name(shard) -> str:
    """The file of a streaming shard reader, as errors name it."""
    return os.path.join(shard.dirname, shard.split, shard.raw_data.basename)


class DecodingStreamingDataset(StreamingDataset):
    """StreamingDataset whose items are decoded, transformed samples, or {"bad": reason} for a skipped one; each
    carries its shard's file, its sample id and its offset in that shard."""

    def __init__(self, *, resolution: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.resolution = resolution

    def get_item(self, sample_id: int, retry: int = 7) -> dict:
        shard_id, offset = self.spanner[sample_id]
        where = {"shard": shard_name(self.shards[shard_id]), "id": sample_id, "offset": int(offset)}
        try:
            raw = super().get_item(sample_id, retry)
        except RuntimeError:
            raise  # a shard that cannot be fetched is not one bad sample
        except Exception as e:  # a corrupt shard body shows up as arbitrary decode errors
            return {"bad": f"unreadable MDS sample ({type(e).__name__})", **where}
        label = raw.get("label")  # NO_LABEL: the writer's mark for a sample without a class label
        try:
            sample = decode_sample(
                raw.get("key", str(sample_id)), raw.get("image"), raw.get("caption"),
                resolution=self.resolution, table=None, label=None if label is None or label == NO_LABEL else label,
                t5_emb=raw.get("t5_emb"), t5_mask=raw.get("t5_mask"), pooled_emb=raw.get("pooled_emb"),
            )  # fmt: skip
        except BadSample as e:
            return {"bad": str(e), "key": raw.get("key"), **where}
        return {**sample, **where}


def collate_mds(items: list[dict]) -> dict:
    """Collate the good samples, with `sample_ids` (each one's place in the dataset's storage order); keep the raw
    count (streaming's position counts every sample) and the skipped ones (shard, offset, key, reason)."""
    good = [item for item in items if "bad" not in item]
    batch = collate(good) if good else {"images": None, "captions": [], "keys": []}
    batch["sample_ids"] = [int(item["id"]) for item in good]
    batch["num_raw"] = len(items)
    bad = [item for item in items if "bad" in item]
    batch["skipped"] = [(item["shard"], item["offset"], item.get("key"), item["bad"]) for item in bad]
    batch["shards"] = [(item["shard"], item["id"], "bad" not in item) for item in items]
    return batch


class _RawCountingLoader(StreamingDataLoader):
    """StreamingDataLoader whose resume count includes skipped samples (they were consumed all the same)."""

    def _get_batch_size(self, batch: Any) -> int:
        return batch["num_raw"]


class MDSLoader:
    """Batches from MDS shards for one rank. A batch is short by the number of corrupt samples in it, and a batch
    with no valid sample is yielded empty (`keys == []`, `images` None): streaming's ranks must step in lockstep,
    so every rank yields exactly one batch per streaming batch. A rank that dropped an all-bad batch would reach
    the end of its epoch steps earlier than the others and sleep in streaming's next-epoch barrier (it waits for
    every local rank) while they wait for it in a training collective: a deadlock. The trainer
    redraws on every rank when any rank's batch is empty. `sample_ids` lists each sample's place in storage order."""

    def __init__(self, config: DataConfig, *, rank: int, world_size: int):
        if config.buckets:
            raise UserError(f"data.{MDS_BUCKETS}")
        self.config, self.rank, self.world_size = config, rank, world_size
        if is_remote(config.path):
            if not config.cache_dir:
                raise UserError(
                    f"MDS path {config.path!r} is remote: set data.cache_dir to a local folder unique to this job"
                )
            location = {"remote": config.path, "local": config.cache_dir}
        else:
            check_mds_folder(config.path)
            location = {"local": config.path}  # local-only data: no copy, no cache
        with streaming_build(rank, world_size, config.local_world_size):
            self.dataset = DecodingStreamingDataset(
                resolution=config.resolution, **location, batch_size=config.batch_size, shuffle=config.shuffle,
                shuffle_seed=config.seed, num_canonical_nodes=config.num_canonical_nodes,
            )  # fmt: skip
        workers = config.num_workers
        self.dataloader = _RawCountingLoader(
            self.dataset, batch_size=config.batch_size, num_workers=workers, collate_fn=collate_mds,
            prefetch_factor=config.prefetch_factor if workers else None, persistent_workers=False,
        )  # fmt: skip
        self.shard_sizes = {shard_name(shard): shard.samples for shard in self.dataset.shards}
        self.epoch = 0
        self.skips = SkipCounter()
        self.skip_warnings = SkipWarnings()
        self.num_samples_yielded = 0
        self._resume: dict | None = None
        self._resumed_mid_epoch = False

    @property
    def num_skipped(self) -> int:
        """Corrupt or incomplete samples skipped so far on this rank."""
        return self.skips.total

    def __iter__(self):
        while self.config.num_epochs is None or self.epoch < self.config.num_epochs:
            good_per_shard: dict[str, int] = {}  # this epoch, this rank
            read_per_shard: dict[str, set[int]] = {}  # sample ids, this epoch, this rank
            partial, self._resumed_mid_epoch = self._resumed_mid_epoch, False
            for batch in self.dataloader:
                for shard, offset, key, reason in batch.pop("skipped"):
                    self.skips.add(reason)
                    self.skip_warnings.warn(shard, offset, key, reason)
                for shard, sample_id, good in batch.pop("shards"):
                    good_per_shard[shard] = good_per_shard.get(shard, 0) + good
                    read_per_shard.setdefault(shard, set()).add(sample_id)
                batch.pop("num_raw")
                self._resume = self.dataloader.state_dict()
                self.num_samples_yielded += len(batch["keys"])
                yield batch  # also when empty: see the class docstring
            # a shard's valid samples may have gone to another rank (or been read before a resume): only a shard this
            # rank read whole is known to yield nothing
            all_bad = sorted(
                shard for shard, good in good_per_shard.items()
                if not good and len(read_per_shard[shard]) == self.shard_sizes[shard]
            )  # fmt: skip
            if all_bad:
                raise UserError(
                    f"MDS shards {all_bad} had no valid sample on rank {self.rank} in epoch {self.epoch} "
                    f"(skipped: {dict(self.skips.counts)}); rebuild or remove them"
                )
            if good_per_shard and not any(good_per_shard.values()) and not partial:  # else it would skip forever
                raise UserError(
                    f"rank {self.rank} read no valid sample in epoch {self.epoch}: its part of MDS shards "
                    f"{sorted(good_per_shard)} was all skipped ({dict(self.skips.counts)}); rebuild or remove them"
                )
            self.epoch += 1

    def max_batches(self) -> int | None:
        """An upper bound on the batches this rank yields (None: it streams forever): streaming gives every rank
        ceil(epoch size / ranks) samples an epoch, and each worker may end its share with a short batch."""
        if self.config.num_epochs is None:
            return None
        per_epoch = math.ceil(len(self.dataset) / self.config.batch_size) + max(self.config.num_workers - 1, 0)
        return self.config.num_epochs * per_epoch

    def state_dict(self) -> dict:
        """Streaming's state (identical on every rank) plus this rank's skip counter, as of the last batch."""
        return {
            "format": "mds",
            "world_size": self.world_size,
            "epoch": self.epoch if self._resume is None else self._resume["epoch"],
            "stream": self._resume,
            "skipped": dict(self.skips.counts),
            "num_samples_yielded": self.num_samples_yielded,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; call before iterating."""
        if state.get("format") != "mds" or state.get("world_size") != self.world_size:
            raise UserError(
                f"MDS loader state (format={state.get('format')!r}, world_size={state.get('world_size')}) does not "
                f"match this run (mds, {self.world_size}); exact resume needs the same world size"
            )
        self.epoch = int(state["epoch"])
        self._resume = state["stream"]
        if state["stream"] is not None:
            self.dataloader.load_state_dict(state["stream"])
            self._resumed_mid_epoch = state["stream"]["sample_in_epoch"] > 0
        self.skips = SkipCounter(state["skipped"])
        self.num_samples_yielded = int(state["num_samples_yielded"])
