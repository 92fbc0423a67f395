"""Finite data: each loader's bound on the batches it yields, and the state after the last,
short batch of a finite webdataset stream (its skip counter includes what was skipped before it)."""

import pytest
from data_helpers import good_members, write_tar

from ard_scale.config.data import DataConfig
from ard_scale.data.loader import build_loader
from ard_scale.data.samples import NO_LABEL
from ard_scale.data.writers import MDSWriterAdapter

# These tests corrupt samples on purpose: each skip's warning (naming the shard and sample) is expected here
# (test_data_corruption.py asserts its text).
pytestmark = pytest.mark.filterwarnings("ignore:skipped sample")


def config(path, **kwargs):
    base = dict(format="webdataset", path=str(path), batch_size=2, resolution=16, num_workers=0, num_epochs=1)
    return DataConfig(**{**base, **kwargs})


def shard(path, num, bad=()):
    members = []
    for i in range(num):
        members += [(f"k{i}.png", b""), (f"k{i}.txt", b"c")] if i in bad else good_members(f"k{i}", i)
    write_tar(path, members)


@pytest.mark.parametrize(("num", "batch_size", "epochs"), [(5, 2, 1), (6, 2, 1), (5, 8, 1), (5, 2, 3)])
def test_webdataset_bound_is_at_least_the_batches_yielded_and_tight_without_skips(tmp_path, num, batch_size, epochs):
    shard(tmp_path / "s0.tar", num)
    loader = build_loader(config(tmp_path, batch_size=batch_size, num_epochs=epochs), rank=0, world_size=1)
    yielded = sum(1 for _ in loader)
    assert yielded == -(-num * epochs // batch_size)  # ceil: full batches, then one short batch
    assert yielded <= loader.max_batches() <= yielded + 1
    assert build_loader(config(tmp_path, num_epochs=None), rank=0, world_size=1).max_batches() is None


def test_the_bucketed_bound_covers_each_buckets_last_short_batch(tmp_path):
    """With data.buckets each bucket ends on its own short batch: 3 buckets of 5 samples at batch 2 give 3 × 3 = 9
    batches, more than one short batch after the 15 // 2 full ones. The bound is what the trainer checks
    train.max_steps against (`check_reachable`): one below the batches the data gives refuses a run it can finish."""
    sizes = [(64, 32), (32, 64), (48, 48)]
    write_tar(tmp_path / "s0.tar", [m for i in range(15) for m in good_members(f"k{i:02d}", i, size=sizes[i % 3])])
    loader = build_loader(config(tmp_path, buckets=True, resolution=64), rank=0, world_size=1)
    batches = [len(b["keys"]) for b in loader]
    assert sorted(batches) == [1, 1, 1] + [2] * 6
    assert len(batches) <= loader.max_batches()


def test_a_batch_larger_than_the_dataset_bounds_the_run_at_one_step(tmp_path):
    shard(tmp_path / "s0.tar", 10)
    for rank in (0, 1):  # 5 samples a rank, batch 8: one short batch each
        loader = build_loader(config(tmp_path, batch_size=8), rank=rank, world_size=2)
        assert loader.max_batches() == 1
        assert [len(b["keys"]) for b in loader] == [5]


def test_the_state_after_the_last_short_batch_counts_every_skip_and_resumes_at_the_end(tmp_path):
    shard(tmp_path / "s0.tar", 5, bad={3})
    loader = build_loader(config(tmp_path), rank=0, world_size=1)
    batches = iter(loader)
    assert next(batches)["keys"] == ["k0", "k1"]
    assert next(batches)["keys"] == ["k2", "k4"]  # k3 skipped on the way
    assert loader.skips.counts == {"zero-size image": 1}
    shard(tmp_path / "s1.tar", 1)  # an odd total: the last batch is a short, flushed one
    loader = build_loader(config(tmp_path, shuffle=False), rank=0, world_size=1)
    keys = []
    for batch in loader:
        keys.append(batch["keys"])
        state = loader.state_dict()
    assert keys == [["k0", "k1"], ["k2", "k4"], ["k0"]]  # s1 holds k0 too
    assert state["skipped"] == {"zero-size image": 1}  # as of the flushed batch, not of the last full one
    resumed = build_loader(config(tmp_path, shuffle=False), rank=0, world_size=1)
    resumed.load_state_dict(state)
    assert list(resumed) == []  # nothing is emitted twice


def test_mds_bound_covers_every_batch_including_empty_ones(tmp_path, mds_env):
    writer = MDSWriterAdapter(str(tmp_path / "m"), shard_bytes=1 << 20, with_label=True)
    for i in range(7):
        image = b"garbage" if i in (2, 3) else dict(good_members(f"m{i}", i))[f"m{i}.png"]
        writer.write({"key": f"m{i}", "image": image, "caption": f"c{i}", "label": -1 if i == 0 else i})
    writer.finish()
    loader = build_loader(config(tmp_path / "m", format="mds", shuffle=False, num_epochs=2), rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == 2 * 4 == loader.max_batches()  # ceil(7 / 2) per epoch, an all-bad batch included
    assert [b["keys"] for b in batches[:4]] == [["m0", "m1"], [], ["m4", "m5"], ["m6"]]  # (m2, m3): yielded empty
    assert batches[0]["labels"].tolist() == [NO_LABEL, 1]  # m0's -1 is the writer's 'no label': unlabelled
    assert batches[2]["labels"].tolist() == [4, 5]
    assert loader.skips.counts == {"undecodable image (UnidentifiedImageError)": 4}
