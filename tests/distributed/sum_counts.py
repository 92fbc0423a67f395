"""Run by torchrun (2 ranks, gloo) from test_collectives_ranks.py: only rank 1 has skipped samples; every rank writes
what sum_counts_over_ranks / any_rank / all_ranks answered to OUT.rank{r}.json."""

import json
import sys

import torch.distributed as dist

from ard_scale.distributed.collectives import all_ranks, any_rank, sum_counts_over_ranks

dist.init_process_group("gloo")
rank = dist.get_rank()
counts = {"bad_image": 2, "missing_caption": 1} if rank == 1 else {}
out = {
    "skipped": sum_counts_over_ranks(counts),
    "any": any_rank(rank == 1),
    "all": all_ranks(rank == 1),
}
with open(f"{sys.argv[1]}.rank{rank}.json", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
