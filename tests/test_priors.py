"""Priors against torch.distributions: log densities, closed-form and Monte Carlo KLs, and samples.

A prior is given the coefficients at t = 1 and the event shape, never a corruption, so these
tests build the coefficients by hand.
"""

import math

import pytest
import torch
from torch import distributions as D

import lincorrupt as lc

f64 = torch.float64
SHAPE = (2, 3, 4)
ALPHA_1 = torch.linspace(0.05, 0.6, 12, dtype=f64).view(1, 1, 3, 4)  # per coordinate, broadcast over channels
SIGMA_1 = 0.8


def coefficients_at_one():
    return lc.Coefficients(ALPHA_1.log(), torch.full((1, 1, 1, 1), math.log(SIGMA_1), dtype=f64))


def images(n, seed):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=f64)


def normal(mean, var):
    """The diagonal Gaussian with these per-coordinate moments as a distribution over (*SHAPE)."""
    mean, var = torch.broadcast_tensors(torch.as_tensor(mean, dtype=f64), torch.as_tensor(var, dtype=f64))
    return D.Independent(D.Normal(mean, var.sqrt()), len(SHAPE))


def reference(prior):
    """The distribution of u_1 that a prior describes, built from its own statistics."""
    if isinstance(prior, lc.StandardNormalPrior):
        return normal(torch.zeros(SHAPE), torch.ones(SHAPE))
    if isinstance(prior, lc.GaussianPrior):
        return normal((ALPHA_1 * prior.mean)[0], (ALPHA_1**2 * prior.var + SIGMA_1**2)[0])
    centres = ALPHA_1 * prior.u_x.to(f64)  # an equal mixture of N(alpha_1 u_x[j], sigma_1^2)
    component = normal(centres, torch.full(centres.shape, SIGMA_1**2, dtype=f64))
    return D.MixtureSameFamily(D.Categorical(torch.ones(centres.shape[0], dtype=f64)), component)


PRIORS = {
    "standard-normal": lambda: lc.StandardNormalPrior(),
    "gaussian": lambda: lc.GaussianPrior(images(1, 1)[0], images(1, 2)[0] ** 2 + 0.1),
    "empirical": lambda: lc.EmpiricalPrior(images(5, 3)),
}


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_log_prob_is_the_density_of_the_distribution_it_describes(name):
    prior = PRIORS[name]().double()
    u_1 = 1.5 * images(7, 4)
    torch.testing.assert_close(prior.log_prob(coefficients_at_one(), u_1), reference(prior).log_prob(u_1))


@pytest.mark.parametrize("name", ["standard-normal", "gaussian"])
def test_closed_form_kl_is_torch_distributions_kl(name):
    prior = PRIORS[name]().double()
    u_x = images(6, 5)
    q = normal(ALPHA_1 * u_x, torch.full(u_x.shape, SIGMA_1**2, dtype=f64))  # q(u_1 | x), batch of 6
    torch.testing.assert_close(prior.kl(coefficients_at_one(), u_x), D.kl_divergence(q, reference(prior)))


def test_monte_carlo_kl_of_a_one_image_empirical_prior_averages_to_the_gaussian_kl():
    """With one stored image the empirical prior is N(alpha_1 u_0, sigma_1^2); the base class's
    one-draw estimate must average to KL = sum alpha_1^2 (u_x - u_0)^2 / (2 sigma_1^2)."""
    stored, u_x = images(1, 6), images(1, 7)
    prior = lc.EmpiricalPrior(stored).double()
    n = 4000
    draws = prior.kl(coefficients_at_one(), u_x.expand(n, *SHAPE), generator=torch.Generator().manual_seed(8))
    exact = float((ALPHA_1**2 * (u_x - stored) ** 2).sum() / (2 * SIGMA_1**2))
    assert abs(float(draws.mean()) - exact) < 4 * float(draws.std()) / math.sqrt(n)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_samples_have_the_shape_dtype_and_moments_of_the_distribution(name):
    prior = PRIORS[name]()
    n = 20000
    u = prior.sample(coefficients_at_one(), SHAPE, n, generator=torch.Generator().manual_seed(9), dtype=f64)
    assert u.shape == (n, *SHAPE) and u.dtype == f64
    ref = reference(prior.double())
    torch.testing.assert_close(u.mean(0), ref.mean, atol=5 * float(ref.variance.max().sqrt()) / math.sqrt(n), rtol=0)
    torch.testing.assert_close(u.var(0), ref.variance, rtol=0.1, atol=0)


def test_sample_uses_the_corruptions_coefficients_at_t_1():
    """lc.sample hands the prior the corruption's own alpha_1, sigma_1 and shape."""
    c = lc.IHDM(SHAPE)
    seen = {}

    class Recording(lc.Prior):
        def sample(self, c_1, shape, num_samples, generator=None, device=None, dtype=torch.float32):
            seen.update(c_1=c_1, shape=shape)
            return torch.zeros(num_samples, *shape, dtype=dtype)

    c.prior = Recording()
    lc.sample(lambda z, t: z, c, 2, steps=1, prediction="x")
    expected = c.coefficients(torch.ones(1))
    torch.testing.assert_close(seen["c_1"].log_alpha, expected.log_alpha)
    torch.testing.assert_close(seen["c_1"].log_sigma, expected.log_sigma)
    assert seen["shape"] == SHAPE
