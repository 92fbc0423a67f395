"""The evaluation set: prompts, reference statistics from a shard set (storage order, independent of the rank split),
generation split across ranks and gathered in index order, cache keys."""

import itertools
import threading

import numpy as np
import pytest
import torch

from ard_scale.data import bundled_digits_path
from ard_scale.data.bundled import NUM_SAMPLES
from ard_scale.diffusion.condition import Condition
from ard_scale.evaluation.eval_set import (
    cache_key,
    data_captions,
    file_identity,
    iter_real_samples,
    read_prompts,
    reference_stats_from_shards,
)
from ard_scale.evaluation.evaluator import generate_all
from ard_scale.evaluation.fid import FID, ReferenceStats
from ard_scale.evaluation.generate import prompt_generate_fn

DIGITS = bundled_digits_path("webdataset")


def threaded_ranks(world_size, fn):
    """Run fn(rank, gather) on `world_size` threads whose gather is a real all-gather + concatenate."""
    barrier, slots, results = threading.Barrier(world_size), [None] * world_size, [None] * world_size

    def gather_for(rank):
        def gather(t):
            slots[rank] = t.clone()
            barrier.wait()
            out = torch.cat(slots)
            barrier.wait()
            return out

        return gather

    def target(rank):
        results[rank] = fn(rank, gather_for(rank))

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_read_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("  a red square \n\n a blue circle\n")
    assert read_prompts(path) == ["a red square", "a blue circle"]
    path.write_text("\n \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompts(path)
    with pytest.raises(ValueError, match="nowhere.txt"):
        read_prompts(tmp_path / "nowhere.txt")


def test_data_captions_are_the_shards_in_storage_order():
    captions = data_captions(DIGITS, "webdataset", 3)
    assert captions == [s["caption"] for s in itertools.islice(iter_real_samples(DIGITS, "webdataset", 32), 3)]
    assert len(captions) == 3 and all(captions)


def test_reference_stats_are_the_first_images_whatever_the_rank_split(tiny_features):
    fid = FID(tiny_features)
    n = 10
    images = [s["image"] for s in itertools.islice(iter_real_samples(DIGITS, "webdataset", 16), n)]
    expected = ReferenceStats.from_features(fid.features((torch.stack(images) + 1) / 2))
    one = reference_stats_from_shards(fid, DIGITS, "webdataset", resolution=16, num_images=n, batch_size=4)
    np.testing.assert_allclose(one.mu, expected.mu, rtol=1e-6)
    np.testing.assert_allclose(
        one.sigma, expected.sigma, rtol=1e-5, atol=1e-9
    )  # float32 conv rounding varies with the batch

    def rank_fn(rank, gather):
        return reference_stats_from_shards(
            fid, DIGITS, "webdataset", resolution=16, num_images=n, batch_size=3, rank=rank, world_size=3, gather=gather
        )

    for stats in threaded_ranks(3, rank_fn):
        np.testing.assert_allclose(stats.mu, expected.mu, rtol=1e-6)
        np.testing.assert_allclose(
            stats.sigma, expected.sigma, rtol=1e-5, atol=1e-9
        )  # float32 conv rounding varies with the batch


def test_reference_stats_from_a_set_smaller_than_asked_say_how_many_images_they_hold(tiny_features, recwarn):
    fid = FID(tiny_features)
    held = NUM_SAMPLES  # the bundled digits
    reference_stats_from_shards(fid, DIGITS, "webdataset", resolution=8, num_images=held, batch_size=512)
    assert not [w for w in recwarn if "FID reference statistics" in str(w.message)]  # all there: nothing to say
    with pytest.warns(UserWarning, match=f"from the {held} images of .*, fewer than the {held + 1} asked for"):
        reference_stats_from_shards(fid, DIGITS, "webdataset", resolution=8, num_images=held + 1, batch_size=512)


def test_remote_shards_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="fid_reference_path"):
        next(iter_real_samples("s3://bucket/shards", "mds", 32))


def test_generate_all_gathers_every_image_once_in_index_order():
    calls = []

    def generate(indices):
        calls.append(len(indices))
        return indices.float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2).clone(), None

    single = generate_all(generate, 7, 2)
    assert single[:, 0, 0, 0].tolist() == list(range(7))
    calls.clear()
    for out in threaded_ranks(
        3, lambda rank, gather: generate_all(generate, 7, 2, rank=rank, world_size=3, gather=gather)
    ):
        torch.testing.assert_close(out, single)
    assert len(calls) == 6 and set(calls) == {2}  # 2 full-size calls on each of the 3 ranks


def test_prompt_generate_fn_pairs_each_image_with_its_prompt():
    prompts = ["one", "two", "three"]
    seen = []

    def encode(captions):
        seen.append(list(captions))
        return Condition(labels=torch.tensor([prompts.index(c) for c in captions]))

    def sample(noise, cond):
        return torch.tanh(noise + cond.labels.view(-1, 1, 1, 1).float())

    gen = prompt_generate_fn(sample, noise_shape=(3, 4, 4), prompts=prompts, encode=encode, seed=7)
    images, captions = gen(torch.arange(5))
    assert captions == ["one", "two", "three", "one", "two"] and seen[-1] == captions
    part, _ = gen(torch.tensor([4]))
    torch.testing.assert_close(part, images[4:])


def test_cache_keys(tmp_path):
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})
    f = tmp_path / "w.pth"
    f.write_bytes(b"1234")
    before = file_identity(f)
    f.write_bytes(b"123456")
    assert file_identity(f) != before  # a replaced weights file invalidates what was cached with it
    assert file_identity(tmp_path / "none")["missing"]
