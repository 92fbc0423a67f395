"""Run by torchrun (2 ranks, gloo) from test_draw_batches.py: the ranks' streams differ (rank 1 has an empty batch,
an all-corrupt MDS batch, and ends one batch earlier); every rank writes what draw_micro_batches answered, step by
step, to OUT.rank{r}.json."""

import json
import sys

import torch.distributed as dist

from ard_scale.data.samples import SkipCounter
from ard_scale.trainer.loop import draw_micro_batches

dist.init_process_group("gloo")
rank = dist.get_rank()
sizes = [2, 1, 2, 2, 2, 1] if rank == 0 else [2, 2, 0, 1, 2]  # samples per batch of each rank's stream
batches = iter([{"keys": [f"r{rank}b{i}s{j}" for j in range(n)]} for i, n in enumerate(sizes)])
dropped, steps = SkipCounter(), []
while (drawn := draw_micro_batches(batches, 2, dropped)) is not None:
    micro, total = drawn
    steps.append({"keys": [b["keys"] for b in micro], "total": total})
with open(f"{sys.argv[1]}.rank{rank}.json", "w") as f:
    json.dump({"steps": steps, "dropped": dict(dropped.counts), "left": len(list(batches))}, f)
dist.destroy_process_group()
