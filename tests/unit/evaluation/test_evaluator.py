"""Evaluator: every sample generated exactly once across ranks with the same number of generate calls per rank, and
2 ranks (threads exchanging through a real all-gather-like barrier) give the 1-process numbers."""

import math
import threading

import pytest
import torch

from ard_scale.config import EvalConfig
from ard_scale.diffusion.condition import Condition
from ard_scale.evaluation.clip_score import CLIPScore
from ard_scale.evaluation.evaluator import Evaluator, rank_batches
from ard_scale.evaluation.fid import FID

CAPTIONS = ["a red square", "a blue circle", "two green dogs", "the digit seven", "an empty room"]


def generate(indices):
    """Images and captions keyed on the global sample index, as a real generate_fn keys noise and prompts."""
    images = torch.stack([torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(int(i))) for i in indices])
    return images, [CAPTIONS[int(i) % len(CAPTIONS)] for i in indices]


@pytest.mark.parametrize("num_samples,batch_size,world_size", [(10, 2, 3), (2, 4, 3), (17, 4, 2), (8, 8, 1)])
def test_rank_batches_cover_every_sample_once(num_samples, batch_size, world_size):
    per_rank = [rank_batches(num_samples, batch_size, r, world_size) for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1  # same number of generate calls on every rank
    seen = [int(i) for batches in per_rank for idx, n in batches for i in idx[:n]]
    assert sorted(seen) == list(range(num_samples))
    assert all(len(idx) == batch_size for batches in per_rank for idx, _ in batches)


def test_should_run():
    ev = Evaluator(EvalConfig(every=5))
    assert [s for s in range(12) if ev.should_run(s)] == [5, 10]
    assert not Evaluator(EvalConfig()).should_run(5)


def test_two_ranks_equal_one_process(tiny_features, tiny_clip):
    cfg = EvalConfig(num_samples=11, batch_size=3)
    ref = FID(tiny_features).reference_from_images(
        [torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(9))]
    )
    clip_path = tiny_clip[0]

    def make(rank, world_size, gather):
        fid = FID(tiny_features, ref)
        clip = CLIPScore.from_pretrained("ard-tiny-clip", clip_path)
        return Evaluator(cfg, fid=fid, clip=clip, rank=rank, world_size=world_size, gather=gather)

    single = make(0, 1, None).run(generate)
    assert set(single) == {"fid", "clip_score", "num_samples"} and single["fid"] > 0

    barrier, slots = threading.Barrier(2), [None, None]

    def gather_for(rank):
        def gather(t):  # all_gather + cat, through a barrier: what dist_gather does across processes
            slots[rank] = t.clone()
            barrier.wait()
            out = torch.cat(slots)
            barrier.wait()
            return out

        return gather

    results, calls = [None, None], [0, 0]

    def worker(rank):
        def counted(indices):
            calls[rank] += 1
            return generate(indices)

        results[rank] = make(rank, 2, gather_for(rank)).run(counted)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert calls[0] == calls[1] == 2
    for r in range(2):
        assert results[r]["fid"] == pytest.approx(single["fid"], rel=1e-6)
        assert results[r]["clip_score"] == pytest.approx(single["clip_score"], rel=1e-5)


def test_world_size_without_gather_is_an_error():
    with pytest.raises(ValueError, match="gather"):
        Evaluator(EvalConfig(), world_size=2)


def test_nonfinite_samples_make_the_metrics_nan_with_a_warning(tiny_features, tiny_clip):
    """A sampler that overflows gives NaN (or ±Inf) pixels; as uint8 they are black or white images, which FID and
    CLIP would score as a plausible number. Through the real generate_fn path (pixels_01), a single bad sample out of 7
    makes both metrics NaN and says why; the finite run is unchanged."""
    from ard_scale.evaluation.generate import conditional_generate_fn

    def sample(noise, cond):  # pixel-space sampler: sample 3 overflows to +Inf, sample 5 is NaN
        x = torch.tanh(noise).clone()
        x[cond.labels == 3] = torch.inf
        x[cond.labels == 5] = torch.nan
        return x

    def condition_for(indices):
        return Condition(labels=indices.long()), [CAPTIONS[int(i) % len(CAPTIONS)] for i in indices]

    reals = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = FID(tiny_features).reference_from_images([reals])
    clip = CLIPScore.from_pretrained("ard-tiny-clip", tiny_clip[0])
    evaluator = Evaluator(EvalConfig(num_samples=7, batch_size=4), fid=FID(tiny_features, ref), clip=clip)
    gen = conditional_generate_fn(sample, noise_shape=(3, 8, 8), condition_for=condition_for, seed=3)
    with pytest.warns(UserWarning, match="2 of 7 generated images hold NaN/Inf"):
        values = evaluator.run(gen)
    assert math.isnan(values["fid"]) and math.isnan(values["clip_score"])

    finite = evaluator.run(lambda idx: gen(idx % 3))  # samples 0-2 only: no warning, finite numbers
    assert math.isfinite(finite["fid"]) and math.isfinite(finite["clip_score"])


def test_metrics_are_those_of_every_image_with_its_own_caption(tiny_features, tiny_clip):
    """14 samples in batches of 4: the last batch (12, 13) is padded, and its valid images keep their own captions.
    The evaluator's numbers equal FID and CLIP score computed directly on images 0..13 and their captions."""
    cfg = EvalConfig(num_samples=14, batch_size=4)
    ref = FID(tiny_features).reference_from_images([torch.rand(40, 3, 16, 16, generator=torch.Generator())])
    clip = CLIPScore.from_pretrained("ard-tiny-clip", tiny_clip[0])
    out = Evaluator(cfg, fid=FID(tiny_features, ref), clip=clip).run(generate)

    images, captions = generate(torch.arange(14))
    direct_fid = FID(tiny_features, ref)
    direct_fid.update(images)
    assert out["fid"] == pytest.approx(direct_fid.compute(), rel=1e-9)
    scores = torch.cat([clip.score(images[i : i + 4], captions[i : i + 4]) for i in range(0, 14, 4)])  # its batches
    # the tiny random CLIP scores above 0 only "the digit seven" (sample 13's caption), so image 12 scored against
    # caption 13 would change the mean: the check can fail
    assert clip.score(images[12:13], captions[13:14]) > 0
    assert out["clip_score"] == pytest.approx(float(scores.double().mean()), rel=1e-9)
