"""Offline teacher trajectories: the MDS dump of launchers/dump_trajectories.py, read with exact resumable position.

A dump is a folder with `meta.json` (teacher, schedule, student times, teacher grid, solver, guidance, columns) and
one MDS dataset per chunk, `chunk_NNNNN/index.json`. All chunks are read as the streams of one mosaicml-streaming
dataset, so order, sharding over ranks and resume follow the image MDS reader's rules (mds.py): the same shuffle seed
and `num_canonical_nodes` on every rank and across resumes, ranks in lockstep, resume state identical on every rank.

A batch: `states` (B, S+1, C, H, W) float32 (x_{τ_S} … x_{τ_0}), `seeds` (B,) long, and the condition the trajectory
was solved for — `labels` (B,) long (class-conditional dumps) or `t5_emb` (B, L, C) float32 and `t5_mask` (B, L) long
(dumps made with `--data`, which store the caption embedding inline).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from streaming import Stream, StreamingDataLoader, StreamingDataset

from ard_scale.config.data import DataConfig, check_readable
from ard_scale.data.samples import SkipCounter
from ard_scale.data.streaming_world import streaming_build
from ard_scale.errors import UserError


def _collate(items: list[dict]) -> dict[str, Any]:
    batch = {
        "states": torch.from_numpy(np.stack([item["states"] for item in items])),
        "seeds": torch.tensor([int(item["seed"]) for item in items], dtype=torch.long),
    }
    if "t5_emb" in items[0]:
        batch["t5_emb"] = torch.from_numpy(np.stack([item["t5_emb"] for item in items]))
        batch["t5_mask"] = torch.from_numpy(np.stack([item["t5_mask"] for item in items])).long()
        if "pooled_emb" in items[0]:  # families with a CLIP slot (FLUX.1, SD3)
            batch["pooled_emb"] = torch.from_numpy(np.stack([item["pooled_emb"] for item in items]))
    elif int(items[0]["label"]) >= 0:
        batch["labels"] = torch.tensor([int(item["label"]) for item in items], dtype=torch.long)
    return batch


class TrajectoryLoader:
    """Batches of offline trajectories for one rank. `config.trajectory_path` is the dump folder; the other fields
    as for the image MDS reader (batch_size, shuffle, seed, num_workers, num_canonical_nodes)."""

    def __init__(self, config: DataConfig, *, rank: int, world_size: int):
        self.config, self.rank, self.world_size = config, rank, world_size
        root = Path(config.trajectory_path)
        meta_file = root / "meta.json"
        if not meta_file.is_file():
            raise UserError(
                f"data.trajectory_path {str(root)!r} has no meta.json: not a trajectory dump; write one with "
                "launchers/dump_trajectories.py --out DIR"
            )
        self.meta = json.loads(meta_file.read_text())
        chunks = sorted(p for p in root.glob("chunk_*") if (p / "index.json").is_file())
        if not chunks:
            raise UserError(
                f"the trajectory dump {str(root)!r} has no complete chunk (chunk_NNNNN/index.json); finish it by "
                "rerunning launchers/dump_trajectories.py with the same --out"
            )
        with streaming_build(rank, world_size, config.local_world_size):
            self.dataset = StreamingDataset(
                streams=[Stream(local=str(c)) for c in chunks], batch_size=config.batch_size, shuffle=config.shuffle,
                shuffle_seed=config.seed, num_canonical_nodes=config.num_canonical_nodes,
            )  # fmt: skip
        workers = config.num_workers
        self.dataloader = StreamingDataLoader(
            self.dataset, batch_size=config.batch_size, num_workers=workers, collate_fn=_collate,
            prefetch_factor=config.prefetch_factor if workers else None, persistent_workers=False,
        )  # fmt: skip
        self.epoch = 0
        self.num_samples_yielded = 0
        self._resume: dict | None = None
        self.skips = SkipCounter()  # stays empty: the dump wrote every trajectory whole

    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one stored trajectory, (S+1, C, H, W)."""
        return tuple(self.dataset.get_item(0)["states"].shape)

    def condition_kind(self) -> str | None:
        """What the samples carry as their condition: 'labels', 'text' (T5 embedding) or None (caption indices
        only, from a dump made with --captions)."""
        item = self.dataset.get_item(0)
        return "text" if "t5_emb" in item else "labels" if int(item["label"]) >= 0 else None

    @property
    def num_skipped(self) -> int:
        """Trajectories are never skipped (the dump wrote them); kept for the loop's metrics."""
        return self.skips.total

    def max_batches(self) -> int | None:
        """An upper bound on the batches this rank yields (None: it streams forever), as for the MDS reader."""
        if self.config.num_epochs is None:
            return None
        per_epoch = math.ceil(len(self.dataset) / self.config.batch_size) + max(self.config.num_workers - 1, 0)
        return self.config.num_epochs * per_epoch

    def __iter__(self):
        while self.config.num_epochs is None or self.epoch < self.config.num_epochs:
            for batch in self.dataloader:
                self._resume = self.dataloader.state_dict()
                self.num_samples_yielded += len(batch["seeds"])
                yield batch
            self.epoch += 1

    def state_dict(self) -> dict:
        """Streaming's state (identical on every rank), as of the last batch."""
        return {
            "format": "trajectories",
            "world_size": self.world_size,
            "epoch": self.epoch if self._resume is None else self._resume["epoch"],
            "stream": self._resume,
            "num_samples_yielded": self.num_samples_yielded,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; call before iterating."""
        if state.get("format") != "trajectories" or state.get("world_size") != self.world_size:
            raise UserError(
                f"trajectory loader state (format={state.get('format')!r}, world_size={state.get('world_size')}) "
                f"does not match this run (trajectories, {self.world_size}); exact resume needs the same world size"
            )
        self.epoch = int(state["epoch"])
        self._resume = state["stream"]
        if state["stream"] is not None:
            self.dataloader.load_state_dict(state["stream"])
        self.num_samples_yielded = int(state["num_samples_yielded"])


def trajectory_loader(config: DataConfig, *, rank: int, world_size: int) -> TrajectoryLoader:
    """The offline trajectory stream of this rank (see TrajectoryLoader)."""
    config = check_readable(config, "trajectory_path")  # its paths expanded as a recipe's (`~`, `$VAR`)
    if not os.path.isdir(config.trajectory_path):
        raise UserError(
            f"data.trajectory_path {config.trajectory_path!r} is not a local folder; offline trajectories are read "
            "from a local dump of launchers/dump_trajectories.py"
        )
    return TrajectoryLoader(config, rank=rank, world_size=world_size)
