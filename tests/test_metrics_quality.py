"""Feature-space quality metrics against independent references.

Fréchet distance against the Gaussian closed form on features whose sample moments are set exactly; KID against a
double loop and its unbiasedness; precision/recall against hand-counted cases and a brute-force numpy reference.
"""

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg

from lincorrupt.metrics import frechet_distance, kid, precision_recall, quality

# pytorch-fid calls scipy's sqrtm with its deprecated disp argument
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")

seeds = st.integers(0, 2**32 - 1)


def with_moments(rng, n, mu, sigma):
    """n rows whose sample mean is exactly ``mu`` and unbiased sample covariance exactly ``sigma``."""
    z = rng.normal(size=(n, len(mu)))
    z -= z.mean(0)
    white = linalg.solve_triangular(np.linalg.cholesky(cov(z)), z.T, lower=True).T  # sample cov = I
    return white @ np.linalg.cholesky(sigma).T + mu


def cov(x):
    return np.atleast_2d(np.cov(x, rowvar=False))  # np.cov gives a 0-d array for one feature


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# Fréchet distance ------------------------------------------------------------------------------------------------

@given(seed=seeds, d=st.integers(1, 5), extra=st.integers(2, 20))
def test_frechet_equals_the_closed_form_for_diagonal_covariances(seed, d, extra):
    rng = np.random.default_rng(seed)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    s_a, s_b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    a, b = with_moments(rng, d + extra, mu_a, np.diag(s_a)), with_moments(rng, d + extra + 3, mu_b, np.diag(s_b))
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(s_a) - np.sqrt(s_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-7, abs=1e-9)


@given(seed=seeds, d=st.integers(1, 6))
def test_frechet_equals_the_gaussian_formula_for_general_covariances(seed, d):
    rng = np.random.default_rng(seed)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    s_a, s_b = random_spd(rng, d), random_spd(rng, d)
    a, b = with_moments(rng, 3 * d + 5, mu_a, s_a), with_moments(rng, 2 * d + 9, mu_b, s_b)
    # tr (S_a S_b)^(1/2) = tr (S_a^(1/2) S_b S_a^(1/2))^(1/2): the symmetric form, a different computation
    root_a = linalg.sqrtm(s_a).real
    cross = np.trace(linalg.sqrtm(root_a @ s_b @ root_a).real)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-8)


@given(seed=seeds, d=st.integers(1, 6))
def test_frechet_is_symmetric_and_zero_for_identical_sets(seed, d):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2 * d + 10, d)), 1.5 * rng.normal(size=(3 * d + 7, d)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9, abs=1e-12)
    assert abs(frechet_distance(a, a)) < 1e-8 * np.trace(cov(a))


def test_frechet_accepts_tensors_like_arrays():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 3)).astype(np.float32), rng.normal(size=(15, 3)).astype(np.float32)
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(got, float) and got == pytest.approx(frechet_distance(a, b), rel=1e-12)


# KID -------------------------------------------------------------------------------------------------------------

def kernel(x, y):
    return (float(np.dot(x, y)) / len(x) + 1) ** 3


def mmd2_double_loop(x, y):
    """Unbiased MMD^2 written term by term (Gretton et al. 2012, Lemma 6; equal set sizes)."""
    m = len(x)
    within = sum(kernel(x[i], x[j]) + kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    cross = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2 * cross / m**2


@settings(max_examples=10)
@given(seed=seeds, m=st.integers(2, 6), d=st.integers(1, 4), subsets=st.integers(1, 3))
def test_kid_equals_a_double_loop_when_the_subset_is_the_whole_set(seed, m, d, subsets):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(m, d)), rng.normal(size=(m, d)) + 0.3
    mean, std = kid(a, b, subsets=subsets, subset_size=m, seed=seed)  # every subset is a permutation of the set
    assert mean == pytest.approx(mmd2_double_loop(a, b), rel=1e-10, abs=1e-12)
    assert std < 1e-10 * (1 + abs(mean))


@settings(max_examples=5)
@given(seed=seeds)
def test_kid_draws_subsets_without_replacement(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(7, 2)), rng.normal(size=(5, 2))
    mean, _ = kid(a, b, subsets=1, subset_size=5, seed=seed)  # 5 rows of each: all of b, 5 distinct rows of a
    candidates = [mmd2_double_loop(a[list(rows)], b) for rows in itertools.combinations(range(7), 5)]
    assert min(abs(mean - c) for c in candidates) < 1e-10


def test_kid_is_unbiased_for_identical_distributions():
    """Mean over independent replications within 4 standard errors of 0, where the biased V-statistic is not."""
    rng = np.random.default_rng(0)
    m, d, reps = 20, 4, 200
    unbiased, biased = [], []

    def k(x, y):
        return (x @ y.T / d + 1) ** 3

    for _ in range(reps):
        a, b = rng.normal(size=(m, d)), rng.normal(size=(m, d))
        unbiased.append(kid(a, b, subsets=1, subset_size=m)[0])
        biased.append((k(a, a).sum() + k(b, b).sum() - 2 * k(a, b).sum()) / m**2)
    bound = 4 * np.std(unbiased) / np.sqrt(reps)
    assert abs(np.mean(unbiased)) < bound
    assert np.mean(biased) > 5 * bound  # the test can tell the two estimators apart


@settings(max_examples=5)
@given(seed=seeds)
def test_kid_grows_with_a_mean_shift(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    direction = rng.normal(size=4)
    direction /= np.linalg.norm(direction)
    means = [kid(a, b + s * direction, subsets=5, subset_size=100, seed=1)[0] for s in (0.0, 1.0, 2.0, 4.0)]
    assert all(lo < hi for lo, hi in zip(means, means[1:])), means


# precision and recall --------------------------------------------------------------------------------------------

def precision_recall_reference(real, fake, k):
    """Full distance matrices, sorted: the k-th nearest other point is column k (column 0 is the point itself)."""
    def dist(x, y):
        return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    r_real, r_fake = np.sort(dist(real, real), 1)[:, k], np.sort(dist(fake, fake), 1)[:, k]
    d = dist(fake, real)
    return (d <= r_real[None, :]).any(1).mean(), (d <= r_fake[:, None]).any(0).mean()


@pytest.mark.parametrize("block", [1, 2, 1000])
def test_precision_recall_of_a_hand_counted_line(monkeypatch, block):
    monkeypatch.setattr(quality, "_BLOCK", block)
    real = np.array([0.0, 1, 3, 7, 50, 51])[:, None]
    fake = np.array([2.0, 5, 11, 12, 20])[:, None]
    # k=1: real radii 1, 1, 2, 4, 1, 1; fake radii 3, 3, 1, 1, 8.
    # fake 2 (|2-1| = 1 <= 1), 5 (|5-3| = 2 <= 2), 11 (|11-7| = 4 <= 4: on the boundary counts) are inside; 12, 20 not.
    # real 0, 1, 3 (near fake 2, radius 3), 7 (|7-5| = 2 <= 3) are inside; 50, 51 (|50-20| = 30 > 8) not.
    assert precision_recall(real, fake, k=1) == (3 / 5, 4 / 6)
    # k=2: real radii 3, 2, 3, 6, 43, 44 (50's ball reaches 7..93): every fake point is inside;
    # fake radii 9, 6, 6, 7, 9: real 0..7 inside, 50 and 51 (30 and 31 from 20) not.
    assert precision_recall(real, fake, k=2) == (1.0, 4 / 6)


@settings(max_examples=10)
@given(seed=seeds, k=st.integers(1, 4), n_real=st.integers(5, 25), n_fake=st.integers(5, 25), d=st.integers(1, 4))
def test_precision_recall_equal_a_brute_force_reference(seed, k, n_real, n_fake, d):
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(n_real, d)), rng.normal(size=(n_fake, d)) * 1.5 + 0.5
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quality, "_BLOCK", 3)  # several blocks, the last one short
        assert precision_recall(real, fake, k=k) == precision_recall_reference(real, fake, k)


@settings(max_examples=10)
@given(seed=seeds, k=st.integers(1, 4), n=st.integers(5, 30), d=st.integers(1, 4), duplicate=st.booleans())
def test_precision_recall_of_a_set_against_itself_are_one(seed, k, n, d, duplicate):
    x = np.random.default_rng(seed).normal(size=(n, d))
    if duplicate:
        x[1] = x[0]
    assert precision_recall(x, x.copy(), k=k) == (1.0, 1.0)


def test_precision_recall_of_far_apart_clusters_are_zero():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 100.0
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_warns_when_duplicate_real_features_leave_zero_radii():
    """Every real row four times (k = 3): all real radii are 0, and fakes a hair away count as outside (precision
    0); the warning names the set, and a set without k duplicates draws none."""
    rng = np.random.default_rng(0)
    unique = rng.normal(size=(10, 3))
    real, fake = np.repeat(unique, 4, axis=0), unique + 1e-6
    with pytest.warns(RuntimeWarning, match=r"real_feats: 40 of 40 rows have at least k=3 exact duplicates"):
        precision, _ = precision_recall(real, fake, k=3)
    assert precision == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision_recall(np.repeat(unique, 3, axis=0), fake, k=3)[0] == 1.0  # two copies each: radius > 0


def test_kid_refuses_a_subset_larger_than_a_set():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 2)), rng.normal(size=(20, 2))
    with pytest.raises(ValueError, match=r"subset_size=21 is more than the rows of feats_a \(30\) or feats_b \(20\);"
                                         r" pass subset_size <= 20"):
        kid(a, b, subset_size=21)  # was computed on 20 rows without a word
    assert kid(a, b, subsets=1, subset_size=20)[1] == 0.0


# invariances -----------------------------------------------------------------------------------------------------

@settings(max_examples=10)
@given(seed=seeds)
def test_invariance_to_permuting_features_and_rows(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(25, 5)) * 1.3 + 0.4
    cols = rng.permutation(5)
    rows_a, rows_b = rng.permutation(30), rng.permutation(25)
    fd = frechet_distance(a, b)
    assert frechet_distance(a[:, cols], b[:, cols]) == pytest.approx(fd, rel=1e-9)
    assert frechet_distance(a[rows_a], b[rows_b]) == pytest.approx(fd, rel=1e-9)
    assert kid(a[:, cols], b[:, cols], subsets=4, subset_size=10) == pytest.approx(kid(a, b, subsets=4, subset_size=10),
                                                                                  rel=1e-9)
    pr = precision_recall(a, b)
    assert precision_recall(a[:, cols], b[:, cols]) == pr
    assert precision_recall(a[rows_a], b[rows_b]) == pr


# bad input -------------------------------------------------------------------------------------------------------

GOOD = np.zeros((10, 3))

METRICS = {
    "frechet": lambda a, b: frechet_distance(a, b),
    "kid": lambda a, b: kid(a, b),
    "precision_recall": lambda a, b: precision_recall(a, b, k=3),
}


@pytest.mark.parametrize("name", sorted(METRICS))
@pytest.mark.parametrize("bad, match", [
    (np.zeros(10), r"must be 2-D \(N samples, D features\), got shape \(10,\)"),
    (np.zeros((10, 3, 1)), r"must be 2-D .*got shape \(10, 3, 1\)"),
    (torch.zeros(10), r"must be 2-D .*got shape \(10,\)"),
    (np.zeros((10, 0)), "at least one feature column"),
    (np.zeros((10, 3), dtype=complex), "real"),
    (np.array([["a", "b", "c"]] * 10), "real numeric"),
])
def test_malformed_features(name, bad, match):
    with pytest.raises(ValueError, match=match):
        METRICS[name](bad, GOOD)
    with pytest.raises(ValueError, match=match):
        METRICS[name](GOOD, bad)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_non_finite_values_are_counted(name):
    bad = np.zeros((10, 3))
    bad[0, 0], bad[4, 2] = np.nan, np.inf
    first, second = ("real_feats", "fake_feats") if name == "precision_recall" else ("feats_a", "feats_b")
    with pytest.raises(ValueError, match=rf"{first} has 2 non-finite values \(NaN or inf\)"):
        METRICS[name](bad, GOOD)
    with pytest.raises(ValueError, match=rf"{second} has 1 non-finite values"):
        METRICS[name](GOOD, torch.tensor(bad[4:9]).float())  # a tensor with one inf


@pytest.mark.parametrize("name", sorted(METRICS))
def test_different_feature_sizes(name):
    with pytest.raises(ValueError, match="same feature size D, got 3 and 4"):
        METRICS[name](GOOD, np.zeros((10, 4)))


@pytest.mark.parametrize("call, match", [
    (lambda: frechet_distance(np.zeros((1, 3)), GOOD), r"feats_a has 1 rows; the Fréchet distance .* at least 2"),
    (lambda: frechet_distance(GOOD, np.zeros((1, 3))), r"feats_b has 1 rows; .* at least 2"),
    (lambda: kid(np.zeros((1, 3)), GOOD), r"feats_a has 1 rows; KID .* at least 2"),
    (lambda: kid(GOOD, np.zeros((1, 3))), r"feats_b has 1 rows; KID .* at least 2"),
    (lambda: precision_recall(np.zeros((3, 3)), GOOD, k=3), r"real_feats has 3 rows; .*k=3 .* at least 4"),
    (lambda: precision_recall(GOOD, np.zeros((1, 3)), k=1), r"fake_feats has 1 rows; .*k=1 .* at least 2"),
])
def test_too_few_rows(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda: precision_recall(GOOD, GOOD, k=0), "k must be >= 1, got 0"),
    (lambda: kid(GOOD, GOOD, subsets=0), "subsets must be >= 1, got 0"),
    (lambda: kid(GOOD, GOOD, subset_size=1), "subset_size must be >= 2, got 1"),
])
def test_bad_parameters(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_integer_parameters():
    with pytest.raises(TypeError, match="k must be an integer, got 1.5"):
        precision_recall(GOOD, GOOD, k=1.5)
    with pytest.raises(TypeError, match="subsets must be an integer"):
        kid(GOOD, GOOD, subsets=2.0)
