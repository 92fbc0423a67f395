"""FID (Heusel et al. 2017) on the standard FID Inception features, with the Fréchet distance computed here.

Features: torch-fidelity's Inception-v3 port of the TF graph (`pt_inception-2015-12-05-*.pth`, the weights
pytorch-fid, torch-fidelity and torchmetrics all use, through torchmetrics' public `NoTrainInceptionV3`), read from
a local file — nothing is downloaded. Images reach it as uint8, so numbers match FID computed from saved PNGs. The
generated side is kept as float64 sufficient statistics (Σf, Σffᵀ, n) that ranks sum; the distance is
d² = |μ1-μ2|² + Tr(Σ1) + Tr(Σ2) - 2 Tr((Σ1 Σ2)^½), the trace of the square root from the eigenvalues of Σ1 Σ2
(`frechet_distance`); the tests check it against scipy's `sqrtm` formula as pytorch-fid writes it.

Reference statistics are the real-data side: computed once from a set of images, or loaded from an `.npz` with `mu`
and `sigma` as published suites ship them, and cached as such an `.npz`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ard_scale.errors import UserError

INCEPTION_FEATURES = 2048


def inception_feature_extractor(weights_path: str | os.PathLike) -> torch.nn.Module:
    """The FID Inception-v3 (2048-d pool features, uint8 images in, any size: resized to 299 inside) from a local
    copy of `pt_inception-2015-12-05-6726825d.pth`."""
    path = Path(weights_path)
    if not path.is_file():
        raise UserError(
            f"FID Inception weights not found at {str(path)!r} (eval.fid_inception_path): copy the standard "
            "pt_inception-2015-12-05-6726825d.pth there (nothing is downloaded at run time) or set it to null"
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    # antialias=False: torch-fidelity's TF1-compatible bilinear resize, as the reference implementations resize.
    return NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(INCEPTION_FEATURES)],
        feature_extractor_weights_path=str(path),
        antialias=False,
    )


@dataclass(frozen=True)
class ReferenceStats:
    """Mean and covariance of the reference features (float64)."""

    mu: np.ndarray  # (F,)
    sigma: np.ndarray  # (F, F)

    @classmethod
    def from_features(cls, features_NF: np.ndarray | torch.Tensor) -> ReferenceStats:
        f = np.asarray(torch.as_tensor(features_NF).detach().cpu().double())
        if f.ndim != 2 or f.shape[0] < 2:
            raise UserError(f"reference features must be (N >= 2, F), got shape {f.shape}")
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False))

    @classmethod
    def load(cls, path: str | os.PathLike, num_features: int) -> ReferenceStats:
        """Read an `.npz` with `mu` (F,) and `sigma` (F, F); a missing key or wrong shape names the path."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"FID reference statistics not found at {str(path)!r} (eval.fid_reference_path)")
        with np.load(path) as data:
            missing = [k for k in ("mu", "sigma") if k not in data.files]
            if missing:
                raise UserError(f"FID reference statistics {str(path)!r} lack {missing}; keys are {data.files}")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        f = num_features
        if mu.shape != (f,) or sigma.shape != (f, f):
            raise UserError(
                f"FID reference statistics {str(path)!r} have mu {mu.shape} and sigma {sigma.shape}; the feature "
                f"extractor gives {f} features, so expected mu ({f},) and sigma ({f}, {f})"
            )
        return cls(mu=mu, sigma=sigma)

    def save(self, path: str | os.PathLike) -> None:
        """Write `mu`/`sigma` atomically (a reader sees the old file or the whole new one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.{os.getpid()}.npz")
        np.savez(tmp, mu=self.mu, sigma=self.sigma)
        os.replace(tmp, path)


def cached_reference_stats(
    cache_path: str | os.PathLike, num_features: int, compute: Callable[[], ReferenceStats]
) -> ReferenceStats:
    """Load the statistics from `cache_path`, or `compute()` them once and write them there."""
    if Path(cache_path).is_file():
        return ReferenceStats.load(cache_path, num_features)
    stats = compute()
    stats.save(cache_path)
    return stats


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (B, 3, H, W) -> uint8 as a PNG would store them (round, clamp)."""
    if images.dtype == torch.uint8:
        return images
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d² between Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64: |μ1-μ2|² + Tr(Σ1) + Tr(Σ2) -
    2 Σ √λ_i(Σ1 Σ2). Σ1 Σ2 is similar to the PSD Σ1^½ Σ2 Σ1^½, so its eigenvalues are real and >= 0 up to round-off
    (their real part, clamped at 0, is taken)."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(x, dtype=torch.float64).cpu() for x in (mu1, mu2, sigma1, sigma2))
    eigenvalues = torch.linalg.eigvals(sigma1 @ sigma2).real.clamp(min=0)
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * eigenvalues.sqrt().sum())


class FID:
    """FID of generated images against fixed reference statistics.

    `feature_extractor` maps uint8 (B, 3, H, W) to (B, F) features and has an int attribute `num_features` (the
    Inception from `inception_feature_extractor`, or a tiny random network in tests). Each rank `update`s with its
    own images; `compute(gather)` sums the per-rank sufficient statistics with `gather` (concatenate along dim 0
    across ranks; identity on one process) and returns the distance.
    """

    def __init__(self, feature_extractor: torch.nn.Module, reference: ReferenceStats | None = None) -> None:
        self.extractor = feature_extractor.eval().requires_grad_(False)
        self.num_features = int(getattr(feature_extractor, "num_features", INCEPTION_FEATURES))
        self.reference: ReferenceStats | None = None
        self._device = next(iter(feature_extractor.parameters()), torch.empty(0)).device
        self.reset()
        if reference is not None:
            self.set_reference(reference)

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> FID:
        self._device = torch.device(device)
        self.extractor.to(self._device)
        self.sum, self.outer_sum, self.count = (x.to(self._device) for x in (self.sum, self.outer_sum, self.count))
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, F) features of float [0, 1] or uint8 images."""
        return self.extractor(to_uint8(images).to(self.device)).reshape(images.shape[0], -1)

    def reference_from_images(self, batches: Iterable[torch.Tensor]) -> ReferenceStats:
        """Reference statistics of a set of images (batches of float [0, 1] or uint8 (B, 3, H, W))."""
        return ReferenceStats.from_features(torch.cat([self.features(b).double().cpu() for b in batches]))

    def set_reference(self, reference: ReferenceStats) -> None:
        f = self.num_features
        if reference.mu.shape != (f,) or reference.sigma.shape != (f, f):
            raise UserError(f"reference stats mu {reference.mu.shape}, sigma {reference.sigma.shape}; expected ({f},)")
        self.reference = reference

    def reset(self) -> None:
        """Forget the generated side (the reference stays)."""
        f, on = self.num_features, {"dtype": torch.float64, "device": self.device}  # summed where the features are
        self.sum, self.outer_sum, self.count = torch.zeros(f, **on), torch.zeros(f, f, **on), torch.zeros((), **on)

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        """Add generated images (float [0, 1] or uint8 (B, 3, H, W)) of this rank."""
        features = self.features(images).double()
        self.sum += features.sum(0)
        self.outer_sum += features.T @ features
        self.count += features.shape[0]

    def compute(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        if self.reference is None:
            raise RuntimeError("FID has no reference statistics: call set_reference first")
        total, outer, n = self.sum, self.outer_sum, self.count
        if gather is not None:  # sum the sufficient statistics over ranks (on the extractor's device, as NCCL needs)
            total, outer, n = (gather(x[None]).sum(0) for x in (total, outer, n))
        if n < 2:
            raise RuntimeError(f"FID needs at least 2 generated images, got {int(n)}")
        mu = total / n
        sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
        return frechet_distance(mu, sigma, self.reference.mu, self.reference.sigma)
