"""Bad samples are skipped and counted; an all-bad shard, a missing path and an empty dataset are errors."""

import json
import os

import pytest
from data_helpers import good_members, image_bytes, make_image_folder, write_index, write_tar

from ard_scale.config.data import DataConfig
from ard_scale.data.loader import build_loader
from ard_scale.data.samples import NO_LABEL
from ard_scale.data.sources import iter_shard_set, iter_source
from ard_scale.data.writers import MDSWriterAdapter, write_shards

# These tests corrupt samples on purpose: each skip's warning (naming the shard and sample) is expected here
# (test_data_corruption.py asserts its text).
pytestmark = pytest.mark.filterwarnings("ignore:skipped sample")


def wds_config(path, **kwargs):
    base = dict(format="webdataset", path=str(path), batch_size=3, resolution=16, num_workers=0, num_epochs=1)
    return DataConfig(**{**base, **kwargs})


def read_all(loader):
    keys = []
    for batch in loader:
        keys += batch["keys"]
    return keys


def mixed_shard(path):
    write_tar(path, [
        *good_members("a0", 0),
        ("a1.png", b"\x89PNG garbage"), ("a1.txt", b"undecodable image"),
        ("a2.png", image_bytes(24, 24, seed=2)),  # no caption
        ("a3.png", b""), ("a3.txt", b"zero-size image"),
        ("a4.txt", b"caption without image"),
        *good_members("a5", 5),
    ])  # fmt: skip


@pytest.mark.parametrize("num_workers", [0, 2])
def test_bad_samples_skipped_and_counted(tmp_path, num_workers):
    mixed_shard(tmp_path / "s0.tar")
    write_tar(tmp_path / "s1.tar", good_members("b0", 10) + good_members("b1", 11))
    loader = build_loader(wds_config(tmp_path, num_workers=num_workers, chunk_size=2), rank=0, world_size=1)
    assert sorted(read_all(loader)) == ["a0", "a5", "b0", "b1"]
    assert loader.num_skipped == 4
    assert loader.skips.counts == {"undecodable image (UnidentifiedImageError)": 1, "missing caption": 1,
                                   "zero-size image": 1, "missing image": 1}  # fmt: skip
    assert loader.state_dict()["skipped"] == dict(loader.skips.counts)


def test_a_sample_whose_json_label_is_not_an_integer_is_skipped_and_counted(tmp_path):
    write_tar(tmp_path / "s0.tar", good_members("a0", 0) + good_members("a1", 1) + [("a1.json", b'{"label": "cat"}')])
    loader = build_loader(wds_config(tmp_path), rank=0, world_size=1)
    assert read_all(loader) == ["a0"] and loader.skips.counts == {"label is not an integer": 1}


def test_truncated_shard_counts_the_lost_tail(tmp_path):
    write_tar(tmp_path / "s0.tar", [m for i in range(6) for m in good_members(f"t{i}", i, size=(64, 64))])
    data = (tmp_path / "s0.tar").read_bytes()
    (tmp_path / "s0.tar").write_bytes(data[: len(data) // 2])
    write_index(tmp_path, {"s0.tar": 6})
    loader = build_loader(wds_config(tmp_path), rank=0, world_size=1)
    keys = read_all(loader)
    assert 0 < len(keys) < 6 and keys == [f"t{i}" for i in range(len(keys))]
    assert loader.num_skipped == 6 - len(keys)


def test_all_bad_shard_is_an_error_naming_it(tmp_path):
    write_tar(tmp_path / "s0.tar", good_members("g0", 0) + good_members("g1", 1))
    write_tar(tmp_path / "s1.tar", [("x0.png", b"bad"), ("x0.txt", b"c"), ("x1.jpg", b"bad"), ("x1.txt", b"c")])
    loader = build_loader(wds_config(tmp_path, shuffle=False), rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"s1\.tar.*no valid sample"):
        read_all(loader)


def test_a_shard_split_between_ranks_is_not_all_bad_where_one_part_is(tmp_path):
    bad = lambda key: [(f"{key}.png", b"bad"), (f"{key}.txt", b"c")]  # noqa: E731
    write_tar(tmp_path / "s0.tar", good_members("a0", 0) + good_members("a1", 1) + bad("a2") + bad("a3"))
    write_tar(tmp_path / "s1.tar", [m for i in range(4) for m in good_members(f"b{i}", 10 + i)])
    config = wds_config(tmp_path, shuffle=False, batch_size=1)
    # 3 ranks: rank 1 reads a2, a3 (s0's corrupt tail; a0, a1 are rank 0's) and b0
    keys = [read_all(build_loader(config, rank=rank, world_size=3)) for rank in range(3)]
    assert keys == [["a0", "a1"], ["b0"], ["b1", "b2", "b3"]]
    # a rank whose whole part of an epoch is corrupt is still an error (it would skip forever), whole shard or not
    write_tar(tmp_path / "bad.tar", bad("x0") + bad("x1"))
    with pytest.raises(ValueError, match=r"rank 1 read no valid sample in epoch 0.*bad\.tar"):
        read_all(build_loader(wds_config(tmp_path / "bad.tar", batch_size=1), rank=1, world_size=2))


def test_missing_and_empty_paths_are_errors(tmp_path):
    with pytest.raises(ValueError, match="nowhere/s-000.tar"):
        build_loader(wds_config(str(tmp_path / "nowhere" / "s-{000..001}.tar")), rank=0, world_size=1)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="empty.*no .tar shards"):
        build_loader(wds_config(tmp_path / "empty"), rank=0, world_size=1)
    write_index(tmp_path / "empty", {"gone.tar": 3})
    with pytest.raises(ValueError, match="gone.tar"):
        build_loader(wds_config(tmp_path / "empty"), rank=0, world_size=1)
    write_tar(tmp_path / "hollow.tar", [])
    with pytest.raises(ValueError, match="hollow.tar.*no samples"):
        build_loader(wds_config(tmp_path / "hollow.tar"), rank=0, world_size=1)
    with pytest.raises(ValueError, match="no index.json"):
        build_loader(wds_config(tmp_path / "empty", format="mds"), rank=0, world_size=1)


def write_mds(path, images):
    writer = MDSWriterAdapter(str(path), shard_bytes=1 << 20, with_label=True)
    for i, data in enumerate(images):
        writer.write({"key": f"m{i}", "image": data, "caption": f"caption {i}", "label": i})
    writer.finish()


def test_mds_readers_agree_on_which_negative_label_means_none(tmp_path, mds_env):
    """NO_LABEL (-1) is the writer's mark for a sample without a class label; the shard-set reader (precompute_text's
    copy, the evaluation's real images) read every negative label as none, so a stored -2, which a class-conditional
    run refuses naming its sample, became an unlabelled sample in precomputed shards. Both keep it now."""
    writer = MDSWriterAdapter(str(tmp_path / "mds"), shard_bytes=1 << 20, with_label=True)
    for i, label in enumerate([None, -2, 3]):
        writer.write({"key": f"m{i}", "image": image_bytes(24, 24, seed=i), "caption": f"caption {i}", "label": label})
    writer.finish()
    loader = build_loader(wds_config(tmp_path / "mds", format="mds", shuffle=False), rank=0, world_size=1)
    (batch,) = list(loader)
    assert batch["keys"] == ["m0", "m1", "m2"] and batch["labels"].tolist() == [NO_LABEL, -2, 3]
    assert [s["label"] for s in iter_shard_set(str(tmp_path / "mds"), "mds")] == [None, -2, 3]


def test_the_shard_set_reader_leaves_out_a_zero_size_mds_image_as_training_does(tmp_path, mds_env):
    """precompute_text copies a shard set through iter_shard_set: a zero-size MDS image, which training skips, was
    copied (and encoded) as a sample; it is left out and counted like the webdataset reader's."""
    from collections import Counter

    write_mds(tmp_path / "mds", [image_bytes(24, 24, seed=0), b"", image_bytes(24, 24, seed=2)])
    skipped = Counter()
    assert [s["key"] for s in iter_shard_set(str(tmp_path / "mds"), "mds", skipped)] == ["m0", "m2"]
    assert skipped == {"zero-size image": 1}
    loader = build_loader(wds_config(tmp_path / "mds", format="mds", shuffle=False), rank=0, world_size=1)
    assert read_all(loader) == ["m0", "m2"] and loader.skips.counts == {"zero-size image": 1}


def test_mds_bad_samples_skipped_and_all_bad_is_an_error(tmp_path, mds_env):
    images = [image_bytes(24, 24, seed=i) if i % 3 else b"garbage" for i in range(9)]
    write_mds(tmp_path / "mixed", images)
    loader = build_loader(wds_config(tmp_path / "mixed", format="mds", num_workers=2), rank=0, world_size=1)
    keys = read_all(loader)
    assert sorted(keys) == sorted(f"m{i}" for i in range(9) if i % 3)
    assert loader.num_skipped == 3 and loader.state_dict()["skipped"] == {
        "undecodable image (UnidentifiedImageError)": 3
    }
    write_mds(tmp_path / "allbad", [b"garbage"] * 4)
    loader = build_loader(wds_config(tmp_path / "allbad", format="mds"), rank=0, world_size=1)
    with pytest.raises(ValueError, match=r"allbad/shard.00000.mds.*no valid sample"):
        read_all(loader)


def test_mds_resume_inside_a_shards_corrupt_tail_is_not_an_all_bad_shard(tmp_path, mds_env):
    import itertools
    import json
    import shutil

    def write(folder, bad):  # 16 samples of one size, so the shards split at the same sample whichever are corrupt
        writer = MDSWriterAdapter(str(folder), shard_bytes=6 << 10)
        for i in range(16):
            data = image_bytes(16, 16, seed=i, fmt="BMP")
            writer.write({"key": f"m{i}", "image": b"\0" * len(data) if i in bad else data, "caption": f"c{i}"})
        writer.finish()
        return [shard["samples"] for shard in json.loads((folder / "index.json").read_text())["shards"]]

    first_shard = write(tmp_path / "probe", ())[0]
    assert 3 <= first_shard < 16
    write(tmp_path / "a", {first_shard - 2, first_shard - 1})  # the first shard's last two samples are corrupt
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # a StreamingDataset owns its folder while alive
    cfg = lambda name: wds_config(tmp_path / name, format="mds", shuffle=False, batch_size=first_shard - 2)  # noqa: E731
    first = build_loader(cfg("a"), rank=0, world_size=1)
    head = [b["keys"] for b in itertools.islice(first, 1)]
    assert head == [[f"m{i}" for i in range(first_shard - 2)]]
    resumed = build_loader(cfg("b"), rank=0, world_size=1)
    resumed.load_state_dict(first.state_dict())  # the first shard's rest on this rank: its two corrupt samples
    tail = read_all(resumed)
    assert tail == [f"m{i}" for i in range(first_shard, 16)] and resumed.num_skipped == 2


def test_settings_that_cannot_resume_exactly_are_errors(tmp_path, mds_env):
    with pytest.raises(ValueError, match="remote.*shards.json"):
        build_loader(wds_config("https://example.com/s-{000..003}.tar"), rank=0, world_size=1)
    # the index that message asks for, where build_shards wrote it beside the shards: remote, not 'does not exist'
    with pytest.raises(ValueError, match=r"index 's3://bucket/wds/shards.json' is remote, and only a local index"):
        build_loader(wds_config("s3://bucket/wds/shards.json"), rank=0, world_size=1)
    with pytest.raises(ValueError, match="data.cache_dir"):
        build_loader(wds_config("s3://bucket/mds", format="mds"), rank=0, world_size=1)
    with pytest.raises(ValueError, match="data.buckets: true needs format 'webdataset'"):
        build_loader(wds_config(tmp_path, format="mds", buckets=True), rank=0, world_size=1)


def test_mds_resume_counts_skipped_samples_as_consumed(tmp_path, mds_env):
    import itertools
    import shutil

    images = [image_bytes(24, 24, seed=i) if i % 5 else b"garbage" for i in range(24)]
    write_mds(tmp_path / "a", images)
    for copy in ("b", "c"):  # a StreamingDataset owns its folder while alive; copies order identically
        shutil.copytree(tmp_path / "a", tmp_path / copy)
    cfg = lambda name: wds_config(tmp_path / name, format="mds", num_workers=2, batch_size=4, num_epochs=2)  # noqa: E731
    full = [b["keys"] for b in build_loader(cfg("a"), rank=0, world_size=1)]
    assert any(len(keys) < 4 for keys in full)  # bad samples make short batches
    first = build_loader(cfg("b"), rank=0, world_size=1)
    head = [b["keys"] for b in itertools.islice(first, 4)]
    resumed = build_loader(cfg("c"), rank=0, world_size=1)
    resumed.load_state_dict(first.state_dict())
    assert head + [b["keys"] for b in resumed] == full
    assert resumed.num_skipped == 10  # 5 bad samples x 2 epochs, each counted once


def skip_warnings(record) -> list[str]:
    return [str(w.message) for w in record if str(w.message).startswith("skipped sample")]


def test_each_skipped_sample_is_a_warning_naming_its_shard_place_and_key(tmp_path):
    mixed_shard(tmp_path / "s0.tar")
    loader = build_loader(wds_config(tmp_path / "s0.tar", num_workers=2, chunk_size=2), rank=0, world_size=1)
    with pytest.warns(UserWarning) as record:
        assert read_all(loader) == ["a0", "a5"]
    shard = str(tmp_path / "s0.tar")
    assert skip_warnings(record) == [
        f"skipped sample 1 (key 'a1') of shard {shard}: undecodable image (UnidentifiedImageError)",
        f"skipped sample 2 (key 'a2') of shard {shard}: missing caption",
        f"skipped sample 3 (key 'a3') of shard {shard}: zero-size image",
        f"skipped sample 4 (key 'a4') of shard {shard}: missing image",
    ]


def test_a_truncated_shard_warns_for_its_first_lost_samples_then_counts_the_rest(tmp_path):
    write_tar(tmp_path / "s0.tar", [m for i in range(16) for m in good_members(f"t{i}", i, size=(64, 64))])
    data = (tmp_path / "s0.tar").read_bytes()
    (tmp_path / "s0.tar").write_bytes(data[: len(data) // 8])
    write_index(tmp_path, {"s0.tar": 16})
    loader = build_loader(wds_config(tmp_path, batch_size=1), rank=0, world_size=1)
    with pytest.warns(UserWarning) as record:
        num_read = len(read_all(loader))
    assert 0 < num_read and loader.num_skipped == 16 - num_read > 10
    messages = skip_warnings(record)
    assert len(messages) == 10 and messages[0].startswith(f"skipped sample {num_read} of shard {tmp_path / 's0.tar'}")
    assert messages[-1].endswith("; further skipped samples of this shard are only counted")


def test_mds_skipped_samples_are_warnings_naming_shard_place_and_key(tmp_path, mds_env):
    write_mds(tmp_path / "mixed", [image_bytes(24, 24, seed=i) if i % 3 else b"garbage" for i in range(9)])
    loader = build_loader(wds_config(tmp_path / "mixed", format="mds", num_workers=2), rank=0, world_size=1)
    with pytest.warns(UserWarning) as record:
        read_all(loader)
    shard = str(tmp_path / "mixed" / "shard.00000.mds")
    assert sorted(skip_warnings(record)) == [
        f"skipped sample {i} (key 'm{i}') of shard {shard}: undecodable image (UnidentifiedImageError)"
        for i in (0, 3, 6)
    ]


@pytest.mark.parametrize("listed, index_name", [(4, "shards.json"), (8, "shards.json"), (4, "train.json")])
def test_a_stale_index_count_is_a_warning_naming_the_shard_and_the_fix(tmp_path, listed, index_name):
    """build_shards' shards.json edited to list fewer (4) or more (8) samples than the tar holds (6): the samples
    past the listed count would be silently never read, or skipped one by one as missing; once the shard is read to
    its end, a warning names it, what it holds, the index it was listed in and the fix. An index of another name,
    given as data.path itself, is named as it is (the warning said "shards.json" whatever it was), and the fix is to
    correct it, not to delete it (data.path would then name nothing). A reader of the raw shard set takes the tar
    whole."""
    make_image_folder(str(tmp_path / "img"), 6)
    write_shards(
        iter_source(str(tmp_path / "img"), {}), str(tmp_path / "out"), formats=("webdataset",), shard_bytes=1 << 30
    )
    folder = tmp_path / "out" / "webdataset"
    index = json.loads((folder / "shards.json").read_text())
    assert index["shardlist"][0]["nsamples"] == 6
    index["shardlist"][0]["nsamples"] = listed
    (folder / "shards.json").unlink()
    (folder / index_name).write_text(json.dumps(index))
    path = folder if index_name == "shards.json" else folder / index_name
    loader = build_loader(wds_config(path, chunk_size=2), rank=0, world_size=1)
    with pytest.warns(UserWarning) as record:
        keys = read_all(loader)
    assert keys == [f"img-{i:04d}" for i in range(min(listed, 6))]
    stale = [str(w.message) for w in record if f"index ({folder / index_name}) is stale" in str(w.message)]
    seen = "holds more samples than the 4 its index lists" if listed == 4 else "holds 6 samples, fewer than the 8"
    assert len(stale) == 1 and stale[0].startswith(f"webdataset shard {folder / 'shard-000000.tar'} {seen}")
    if index_name == "shards.json":
        fix = f"or delete {folder / 'shards.json'} so that the tars are counted at start-up"
    else:
        fix = f"or correct the shard's nsamples in {folder / index_name}"
    assert stale[0].endswith(f"rebuild the shards with launchers/build_shards.py, {fix}")
    if listed == 4:
        assert [s["key"] for s in iter_shard_set(str(path), "webdataset")] == [f"img-{i:04d}" for i in range(6)]
