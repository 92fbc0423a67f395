"""Run by torchrun (2 ranks, gloo) from test_collectives_ranks.py; every rank writes what the small collectives
answered to OUT.rank{r}.json: only rank 1 has skipped samples (sum_counts_over_ranks / any_rank / all_ranks), and
each rank has its own loss and per-step losses (mean_over_ranks: the step's logged `loss` and `loss_per_step`). One
launch for both: a launch costs ~15 s, the collectives milliseconds."""

import json
import sys

import torch
import torch.distributed as dist

from ard_scale.distributed.collectives import all_ranks, any_rank, sum_counts_over_ranks
from ard_scale.trainer.step import mean_over_ranks

dist.init_process_group("gloo")
rank = dist.get_rank()
counts = {"bad_image": 2, "missing_caption": 1} if rank == 1 else {}
loss, per_step = torch.tensor(1.0 + 2 * rank), torch.tensor([1.0, 10.0]) * (rank + 1)
out = {
    "counts": {"skipped": sum_counts_over_ranks(counts), "any": any_rank(rank == 1), "all": all_ranks(rank == 1)},
    "means": {"loss": mean_over_ranks(loss).item(), "loss_per_step": mean_over_ranks(per_step).tolist(),
              "own": loss.item()},
}  # fmt: skip
with open(f"{sys.argv[1]}.rank{rank}.json", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
