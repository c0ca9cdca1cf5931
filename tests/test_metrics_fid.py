"""FID pipeline with pytorch-fid's InceptionV3, randomly initialised and loaded from a local file."""

import numpy as np
import pytest
import torch

from lincorrupt.metrics import (
    ENV_VAR,
    WEIGHTS_FILE,
    FIDStats,
    activations,
    dataset_stats,
    fid,
    inception_weights_path,
    load_inception,
    sample_stats,
)


@pytest.fixture(scope="module")
def inception(random_weights):
    return load_inception(random_weights, dims=64)


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = fid(FIDStats(mu1, np.diag(s1), 10), FIDStats(mu2, np.diag(s2), 10))
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("d", [1, 3, 40])
def test_fid_equals_the_trace_of_scipys_matrix_root(d):
    """The eigen-decomposition route against ``tr(sqrtm(S_a S_b))`` from scipy (general, correlated covariances)."""
    from scipy import linalg
    rng = np.random.default_rng(d)
    a = FIDStats.of(rng.normal(size=(200, d)) @ rng.normal(size=(d, d)))
    b = FIDStats.of(rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) + 0.5)
    s_a, s_b = np.atleast_2d(a.sigma), np.atleast_2d(b.sigma)
    root = linalg.sqrtm(s_a @ s_b)
    root = root[0] if isinstance(root, tuple) else root  # scipy < 1.18 with disp=False returned a pair
    expected = np.sum((a.mu - b.mu) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root).real
    assert fid(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert fid(a, a) == pytest.approx(0, abs=1e-8 * np.trace(s_a))


def test_stats_are_mean_and_unbiased_covariance():
    feats = np.random.default_rng(1).normal(size=(50, 4))
    s = FIDStats.of(feats)
    np.testing.assert_allclose(s.mu, feats.mean(0))
    centred = feats - feats.mean(0)
    np.testing.assert_allclose(s.sigma, centred.T @ centred / 49)


def test_pipeline_self_is_zero_and_shift_is_larger(inception):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 3, 16, 16, generator=g)
    a = FIDStats.of(activations(x, inception))
    shifted = FIDStats.of(activations((x + 0.4).clamp(0, 1), inception))
    assert activations(x, inception).shape == (24, 64)
    assert abs(fid(a, a)) < 1e-6
    assert fid(a, shifted) > 100 * max(abs(fid(a, a)), 1e-9)


def test_greyscale_is_repeated_to_rgb(inception):
    x = torch.rand(4, 1, 16, 16)
    np.testing.assert_allclose(activations(x, inception), activations(x.expand(-1, 3, -1, -1), inception), rtol=1e-6)


def test_dataset_stats_are_cached_and_samples_are_shared(inception, tmp_path, monkeypatch):
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    cache = tmp_path / "ref.npz"
    ref = dataset_stats(images, inception, batch_size=4, cache=cache, progress=False)
    monkeypatch.setattr("lincorrupt.metrics.frechet.activations", lambda *a: pytest.fail("cache not used"))
    again = dataset_stats(images, inception, cache=cache, progress=False)
    np.testing.assert_array_equal(again.sigma, ref.sigma)
    monkeypatch.undo()
    # samples in [-1, 1] that are the dataset's images: the same statistics
    stats = sample_stats(lambda n, g: images[:n].float() / 127.5 - 1, 10, inception, batch_size=10, progress=False)
    assert abs(fid(ref, stats)) < 1e-6 and stats.n == 10


def test_dataset_stats_of_labelled_images_are_those_of_the_images(inception):
    from lincorrupt.data import TensorImages
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    labelled = TensorImages(images, (3, 16, 16), labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    plain = dataset_stats(images, inception, batch_size=4, progress=False)
    paired = dataset_stats(labelled, inception, batch_size=4, progress=False)
    np.testing.assert_array_equal(paired.mu, plain.mu)
    np.testing.assert_array_equal(paired.sigma, plain.sigma)


def test_missing_weights_fail_fast_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_FILE}.*--inception-weights.*{ENV_VAR}"):
        inception_weights_path()
    with pytest.raises(FileNotFoundError, match="nope.pth.*does not exist"):
        inception_weights_path(tmp_path / "nope.pth")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.pth"))
    with pytest.raises(FileNotFoundError, match=f"env.pth \\(from \\${ENV_VAR}\\) does not exist"):
        inception_weights_path()


def test_env_var_and_foreign_weights(monkeypatch, tmp_path, random_weights):
    monkeypatch.setenv(ENV_VAR, str(random_weights))
    assert inception_weights_path() == random_weights
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="is not pytorch-fid's Inception state dict"):
        load_inception(foreign, dims=64)
    with pytest.raises(ValueError, match="dims=100"):
        load_inception(random_weights, dims=100)
