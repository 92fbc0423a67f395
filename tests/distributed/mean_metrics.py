"""Run by torchrun (2 ranks, gloo) from test_collectives_ranks.py: each rank has its own loss and per-step losses;
every rank writes what `mean_over_ranks` (the step's logged `loss` and `loss_per_step`) answered to OUT.rank{r}.json."""

import json
import sys

import torch
import torch.distributed as dist

from ard_scale.trainer.step import mean_over_ranks

dist.init_process_group("gloo")
rank = dist.get_rank()
loss, per_step = torch.tensor(1.0 + 2 * rank), torch.tensor([1.0, 10.0]) * (rank + 1)
out = {"loss": mean_over_ranks(loss).item(), "loss_per_step": mean_over_ranks(per_step).tolist(), "own": loss.item()}
with open(f"{sys.argv[1]}.rank{rank}.json", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
