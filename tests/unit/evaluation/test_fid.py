"""FID: self-distance ~0, moving the distribution raises it, our Fréchet distance equals scipy's sqrtm formula
(pytorch-fid's, written out here) on the same features, reference stats cached, errors name the path."""

import numpy as np
import pytest
import torch
from scipy import linalg

from ard_scale.evaluation.fid import FID, ReferenceStats, cached_reference_stats, inception_feature_extractor


def images(n, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 0.6 + 0.2 + shift).clamp(0, 1)


def pytorch_fid_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's `calculate_frechet_distance` (scipy sqrtm), as an independent implementation."""
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_self_distance_is_zero_and_shift_raises_it(tiny_features):
    fid = FID(tiny_features)
    real = images(256)
    fid.set_reference(fid.reference_from_images(real.split(64)))
    for b in real.split(100):
        fid.update(b)
    assert abs(fid.compute()) < 1e-6
    fid.reset()
    fid.update(images(256, seed=1))
    same_dist = fid.compute()
    fid.reset()
    fid.update(images(256, shift=0.2, seed=1))
    shifted = fid.compute()
    assert shifted > 10 * max(same_dist, 1e-4), (same_dist, shifted)


def test_frechet_distance_matches_scipy_on_random_gaussians():
    from ard_scale.evaluation.fid import frechet_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12)) + 0.5
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    expected = pytorch_fid_distance(*stats[0], *stats[1])
    assert frechet_distance(*stats[0], *stats[1]) == pytest.approx(expected, rel=1e-8)
    assert abs(frechet_distance(*stats[0], *stats[0])) < 1e-8


def test_matches_independent_implementation_on_same_features(tiny_features):
    ext = tiny_features
    fid = FID(ext)
    real, fake = images(200), images(150, shift=0.1, seed=3)
    ref = fid.reference_from_images([real])
    fid.set_reference(ref)
    fid.update(fake)
    ours = fid.compute()
    f = fid.features(fake).double().numpy()
    expected = pytorch_fid_distance(ref.mu, ref.sigma, f.mean(0), np.cov(f, rowvar=False))
    assert ours == pytest.approx(expected, rel=1e-6)


def test_gather_sums_rank_statistics(tiny_features):
    """Two 'ranks' updating halves, combined with a gather, give the one-process value."""
    ext = tiny_features
    ref = FID(ext).reference_from_images([images(128)])
    fake = images(96, shift=0.1, seed=5)
    whole = FID(ext, ref)
    whole.update(fake)
    ranks = [FID(ext, ref), FID(ext, ref)]
    ranks[0].update(fake[:40])
    ranks[1].update(fake[40:])
    states = {}

    def gather(t):  # stands for all_gather + cat: this rank's tensor and the other rank's same state
        other = ranks[1]
        for name in ("sum", "outer_sum", "count"):
            if t.numel() == getattr(other, name).numel():
                states[name] = True
                return torch.cat([t, getattr(other, name).reshape(t.shape)])
        raise AssertionError(t.shape)

    assert ranks[0].compute(gather) == pytest.approx(whole.compute(), rel=1e-9)
    assert len(states) == 3
    assert ranks[0].compute(gather) == pytest.approx(whole.compute(), rel=1e-9)  # compute does not mutate


def test_reference_cache_computed_once(tmp_path, tiny_features):
    fid = FID(tiny_features)
    calls = []

    def compute():
        calls.append(1)
        return fid.reference_from_images([images(64)])

    path = tmp_path / "ref" / "stats.npz"
    a = cached_reference_stats(path, 8, compute)
    b = cached_reference_stats(path, 8, compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(a.mu, b.mu)
    np.testing.assert_array_equal(a.sigma, b.sigma)


def test_wrong_shaped_stats_file_names_path_and_shapes(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, mu=np.zeros(5), sigma=np.eye(5))
    with pytest.raises(ValueError, match=r"ref\.npz.*\(5,\).*\(5, 5\).*expected mu \(8,\)"):
        ReferenceStats.load(path, 8)
    np.savez(path, mu=np.zeros(8))
    with pytest.raises(ValueError, match=r"ref\.npz.*sigma"):
        ReferenceStats.load(path, 8)


def test_missing_inception_weights_names_path(tmp_path):
    path = tmp_path / "nowhere" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(ValueError, match=str(path).replace(".", r"\.")):
        inception_feature_extractor(path)


def test_inception_loads_the_local_weights_file(tmp_path, monkeypatch):
    """The real FID Inception (torch-fidelity's port) built from a local file: a random state dict written there is
    what the extractor holds, and it gives (B, 2048) features. No network: torch-fidelity's URL path is unused."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    def no_download(*a, **k):
        raise AssertionError("tried to download the Inception weights")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)
    # a random-init instance to take a state dict from: skip its (file) load once
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    monkeypatch.setattr(NoTrainInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    source = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=empty
    )
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(source.state_dict(), weights)
    monkeypatch.undo()
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)

    ext = inception_feature_extractor(weights)
    for (k, a), b in zip(ext.state_dict().items(), source.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    fid = FID(ext)
    assert fid.num_features == 2048
    assert fid.features(images(1, seed=4)).shape == (1, 2048)  # one image: a 299px CPU forward is slow
