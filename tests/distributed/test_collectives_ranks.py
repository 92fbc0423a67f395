"""The skip counters logged to metrics.jsonl are sums over ranks by reason, so rank 1's skips show on rank 0 (which
writes the log); the small collectives give every rank the same answer; the logged loss is the mean over ranks. 2
ranks, gloo, one launch (small_collectives.py)."""

import json
from pathlib import Path

import pytest

from ard_scale.utils.launch import torchrun

pytestmark = [pytest.mark.distributed]


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("collectives") / "out"
    r = torchrun(2, Path(__file__).with_name("small_collectives.py"), str(out))
    assert r.returncode == 0, r.stderr[-4000:]
    return [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in (0, 1)]


def test_only_rank1_skips_and_every_rank_sees_the_sum_by_reason(answers):
    for got in answers:
        assert got["counts"] == {"skipped": {"bad_image": 2, "missing_caption": 1}, "any": True, "all": False}


def test_the_logged_loss_is_the_mean_over_ranks_and_leaves_each_ranks_own_as_it_was(answers):
    for rank, got in enumerate(answers):
        assert got["means"] == {"loss": 2.0, "loss_per_step": [1.5, 15.0], "own": 1.0 + 2 * rank}
