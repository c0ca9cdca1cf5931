"""Sample-quality metrics computed from feature matrices: Fréchet distance, KID, improved precision and recall.

Each takes two (N, D) feature sets (torch tensors or numpy arrays) and computes in float64. The numbers depend
on the network that produced the features: they are comparable only within one feature space.
"""

from __future__ import annotations

import operator
import warnings

import numpy as np
import torch

from lincorrupt.metrics.frechet import FIDStats, fid

__all__ = ["frechet_distance", "kid", "precision_recall"]

_BLOCK = 1000  # rows per block of pairwise distances: a (1000, N) float64 block is 8 MB per 1000 columns


def _features(x, name: str, min_rows: int, need: str) -> np.ndarray:
    """``x`` as a float64 (N, D) numpy array, checked: 2-D, at least one column, ``min_rows`` rows, all finite."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{name} must be real features, got a complex tensor")
        x = x.detach().to("cpu", torch.float64).numpy()
    else:
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
            raise ValueError(f"{name} must be a real numeric (N, D) feature matrix, got dtype {x.dtype}")
        x = x.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N samples, D features), got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature column, got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} has {x.shape[0]} rows; {need} needs at least {min_rows}")
    bad = int(x.size - np.isfinite(x).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf); expected finite features")
    return x


def _same_width(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have the same feature size D, got {a.shape[1]} and {b.shape[1]}")


def _positive(value, name: str, minimum: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's).

    The FID formula of Heusel et al. 2017 (the two time-scale update rule paper), ``|mu_a - mu_b|^2
    + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, with the sample means and unbiased sample covariances, computed in
    float64 by :func:`lincorrupt.metrics.fid`. The value depends on the feature network: compare it
    only within one feature space.

    Args:
        feats_a: (N_a, D) features, N_a >= 2.
        feats_b: (N_b, D) features, N_b >= 2.

    Returns:
        The distance (>= 0 up to rounding).
    """
    a = _features(feats_a, "feats_a", 2, "the Fréchet distance (a covariance)")
    b = _features(feats_b, "feats_b", 2, "the Fréchet distance (a covariance)")
    _same_width(a, b, "feats_a", "feats_b")
    return fid(FIDStats.of(a), FIDStats.of(b))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two (m, D) sets with the cubic polynomial kernel ``(x.y / D + 1)^3``."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / m**2)


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel, averaged over random subsets.

    Binkowski et al. 2018 ("Demystifying MMD GANs") with the kernel ``k(x, y) = (x.y / D + 1)^3`` and the unbiased
    MMD^2 estimator (Gretton et al. 2012, Lemma 6): on each of ``subsets`` draws of ``m = subset_size``
    rows of each set without replacement (a numpy Generator seeded with ``seed``),
    ``(sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)) / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m^2``.
    Unbiased, so it can be slightly negative. The value depends on the feature network: compare it only within one
    feature space.

    Args:
        feats_a: (N_a, D) features, N_a >= 2.
        feats_b: (N_b, D) features, N_b >= 2.
        subsets: number of random subsets, >= 1.
        subset_size: rows per subset, 2 <= subset_size <= min(N_a, N_b).
        seed: seed of the subset draws.

    Returns:
        ``(mean, std)`` of the estimates over subsets (std with ``ddof=0``; 0 for one subset).
    """
    a = _features(feats_a, "feats_a", 2, "KID (the unbiased estimator)")
    b = _features(feats_b, "feats_b", 2, "KID (the unbiased estimator)")
    _same_width(a, b, "feats_a", "feats_b")
    subsets = _positive(subsets, "subsets", 1)
    m = _positive(subset_size, "subset_size", 2)
    if m > min(len(a), len(b)):
        raise ValueError(f"subset_size={m} is more than the rows of feats_a ({len(a)}) or feats_b ({len(b)}); pass "
                         f"subset_size <= {min(len(a), len(b))} (the subsets are drawn without replacement)")
    rng = np.random.default_rng(seed)
    values = np.array([_mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
                       for _ in range(subsets)])
    return float(values.mean()), float(values.std())


def _distance_blocks(x: torch.Tensor, y: torch.Tensor):
    """Exact Euclidean distances of blocks of rows of ``x`` to all of ``y``: yields ``(start, (rows, len(y)))``."""
    for start in range(0, len(x), _BLOCK):
        # differences, not the |x|^2 + |y|^2 - 2 x.y expansion: a point's distance to itself is exactly 0
        yield start, torch.cdist(x[start:start + _BLOCK], y, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radii(x: torch.Tensor, k: int, name: str) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest neighbour among the other rows; warns when rows with k
    exact duplicates make radii 0 (their balls hold only exact copies)."""
    radii = torch.empty(len(x), dtype=x.dtype)
    for start, d in _distance_blocks(x, x):
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = float("inf")  # exclude the point itself (duplicates still count as neighbours)
        radii[start:start + len(d)] = torch.topk(d, k, dim=1, largest=False).values[:, -1]
    if zero := int((radii == 0).sum()):
        warnings.warn(f"{name}: {zero} of {len(x)} rows have at least k={k} exact duplicates, so their radius is 0 "
                      f"and only an exact copy lies inside it (the precision or recall against this set counts "
                      f"little else); deduplicate the rows (np.unique(feats, axis=0)) or raise k",
                      RuntimeWarning, stacklevel=3)
    return radii


def precision_recall(real_feats, fake_feats, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of Kynkäänniemi et al. 2019 with k-nearest-neighbour manifolds.

    Each set's manifold is the union of balls around its points, radius the distance to the
    k-th nearest other point of the same set; precision is the fraction of fake points inside the real manifold,
    recall the fraction of real points inside the fake manifold; inside means ``distance <= radius`` for some point
    of the other set. Duplicates count as neighbours, as in the paper: a row with k exact copies has radius 0, which
    draws a ``RuntimeWarning`` naming the set (deduplicate it, or raise k). Distances are exact, in float64 row
    blocks of 1000. The values depend on the feature network: compare them only within one feature space.

    Args:
        real_feats: (N_r, D) features of real data, N_r > k.
        fake_feats: (N_f, D) features of generated samples, N_f > k.
        k: the neighbour that sets the radius, >= 1.

    Returns:
        ``(precision, recall)``, each in [0, 1].
    """
    k = _positive(k, "k", 1)
    need = f"precision_recall with k={k} (the k-th neighbour among the other rows)"
    real = _features(real_feats, "real_feats", k + 1, need)
    fake = _features(fake_feats, "fake_feats", k + 1, need)
    _same_width(real, fake, "real_feats", "fake_feats")
    real, fake = torch.from_numpy(real), torch.from_numpy(fake)
    r_real, r_fake = _knn_radii(real, k, "real_feats"), _knn_radii(fake, k, "fake_feats")
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool)
    for start, d in _distance_blocks(fake, real):  # (fake block, all real): both directions from one pass
        fake_in_real[start:start + len(d)] = (d <= r_real).any(dim=1)
        real_in_fake |= (d <= r_fake[start:start + len(d), None]).any(dim=0)
    return float(fake_in_real.double().mean()), float(real_in_fake.double().mean())
