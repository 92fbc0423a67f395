"""The skip counters logged to metrics.jsonl are sums over ranks by reason, so rank 1's skips show
on rank 0 (which writes the log); the small collectives give every rank the same answer. 2 ranks, gloo."""

import json
from pathlib import Path

import pytest

from ard_scale.utils.launch import torchrun

pytestmark = [pytest.mark.distributed]


def test_only_rank1_skips_and_every_rank_sees_the_sum_by_reason(tmp_path):
    out = tmp_path / "out"
    r = torchrun(2, Path(__file__).with_name("sum_counts.py"), str(out))
    assert r.returncode == 0, r.stderr[-4000:]
    for rank in (0, 1):
        got = json.loads(Path(f"{out}.rank{rank}.json").read_text())
        assert got == {"skipped": {"bad_image": 2, "missing_caption": 1}, "any": True, "all": False}


def test_the_logged_loss_is_the_mean_over_ranks_and_leaves_each_ranks_own_as_it_was(tmp_path):
    out = tmp_path / "out"
    r = torchrun(2, Path(__file__).with_name("mean_metrics.py"), str(out))
    assert r.returncode == 0, r.stderr[-4000:]
    for rank in (0, 1):
        got = json.loads(Path(f"{out}.rank{rank}.json").read_text())
        assert got == {"loss": 2.0, "loss_per_step": [1.5, 15.0], "own": 1.0 + 2 * rank}
