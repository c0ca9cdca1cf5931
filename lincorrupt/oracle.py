"""Gaussian data as an exact oracle: the exact denoiser and the exact KL of a sampler's output.

For data ``x ~ N(m, S)`` every corruption's marginal is Gaussian, and in the corruption's basis
``u = V^T x`` (``mu = V^T m``, ``C = V^T S V``, ``u_t = a u_x + s n`` with ``a = alpha_t``, ``s = sigma_t``
per coordinate) Gaussian conditioning gives the exact denoiser

    E[u_x | u_t] = mu + G (u_t - a mu),    G = C a (a C a + diag(s^2))^-1,

affine in ``u_t``. Every sampler is then an affine map of its start ``u_1`` plus independent Gaussian
noise, so its output is Gaussian and its mean and covariance, and the KL to the data, are exact (no Monte
Carlo): :meth:`GaussianData.sample_kl`. Cost: one float64 Cholesky factorisation of a D x D matrix per
time evaluated (O(D^3), D = prod(shape)), O(D^2) memory; a 28x28 image (D = 784) takes seconds for 20
steps on one CPU core.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor

from .corruption import DiagonalizableCorruption
from .predictions import get_prediction
from .priors import GaussianPrior, StandardNormalPrior
from .sampling import SAMPLERS, Denoiser, RuleSampler
from .sampling.grids import grid_times

__all__ = ["GaussianData"]

f64 = torch.float64

#: The default ridge of :meth:`GaussianData.fit`: a variance of 1e-4 (a standard deviation of 0.01 on the
#: [-1, 1] scale, about one 8-bit level) added to every direction.
RIDGE = 1e-4
#: Gains ``(G, b)`` kept per corruption (D x D each): the times of one grid, shared by the samplers run on it.
_CACHED_TIMES = 128


class GaussianData:
    """Gaussian data ``N(mean, cov)`` in data space, the exact oracle of any corruption's samplers.

    Args:
        mean: (*shape) the data's mean.
        cov: (D, D) its covariance, D = prod(shape), symmetric positive definite (stored in float64).
    """

    def __init__(self, mean: Tensor, cov: Tensor):
        mean, cov = torch.as_tensor(mean), torch.as_tensor(cov)
        d = mean.numel()
        if not mean.is_floating_point() or mean.ndim < 1 or cov.shape != (d, d):
            raise ValueError(f"GaussianData needs a floating mean (*shape) and a covariance (D, D) with "
                             f"D = prod(shape); got mean {tuple(mean.shape)}, cov {tuple(cov.shape)}")
        self.mean, self.cov = mean.to(f64), cov.to(device=mean.device, dtype=f64)
        self.shape, self.dim = tuple(mean.shape), d
        if not bool(torch.isfinite(self.cov).all()) or not torch.equal(self.cov, self.cov.T):
            raise ValueError("cov must be a finite symmetric matrix")
        if torch.linalg.cholesky_ex(self.cov).info != 0:
            raise ValueError("cov must be positive definite (fit with a ridge, e.g. GaussianData.fit(x, ridge=1e-4))")
        self._in_basis = weakref.WeakKeyDictionary()  # corruption -> (mu, C, gains)

    @classmethod
    def fit(cls, x: Tensor, ridge: float = RIDGE) -> GaussianData:
        """Sample mean and unbiased sample covariance of ``x`` (N, *shape), N >= 2, plus ``ridge * I``.

        The ridge floors every direction's variance: the sample covariance is singular where N <= D or
        pixels are constant (Fashion-MNIST's borders), and the KL to the data needs it invertible.
        """
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] < 2:
            raise ValueError(f"GaussianData.fit needs a floating tensor (N, *shape) with N >= 2, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
        flat = x.to(f64).flatten(1)
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("x has non-finite values (NaN or inf); expected finite data")
        centred = flat - flat.mean(0)
        cov = centred.T @ centred / (len(flat) - 1) + ridge * torch.eye(flat.shape[1], dtype=f64, device=x.device)
        return cls(flat.mean(0).view(x.shape[1:]), cov)

    # ------------------------------------------------------------------ in a corruption's basis
    def _check(self, corruption: DiagonalizableCorruption) -> None:
        if tuple(corruption.shape) != self.shape:
            raise ValueError(f"the data have shape {self.shape} but {type(corruption).__name__} has "
                             f"{tuple(corruption.shape)}")

    def in_basis(self, corruption: DiagonalizableCorruption) -> tuple[Tensor, Tensor]:
        """``(mu, C)``: the mean (D,) and covariance (D, D) of ``u = V^T x`` in the corruption's basis."""
        self._check(corruption)
        if corruption not in self._in_basis:
            d, basis = self.dim, corruption.basis

            def rows(matrix: Tensor) -> Tensor:  # V^T applied to every row: M V
                return basis.to_basis(matrix.reshape(d, *self.shape)).reshape(d, d)

            c = rows(rows(self.cov).T)  # (S V)^T V = V^T S V for symmetric S
            mu = basis.to_basis(self.mean[None])[0].reshape(d)
            self._in_basis[corruption] = (mu, (c + c.T) / 2, OrderedDict())
        return self._in_basis[corruption][:2]

    def gain(self, corruption: DiagonalizableCorruption, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(G, b)`` with ``E[u_x | u_t] = G u_t + b`` at one time ``t`` (1,) (float64; G (D, D), b (D,)).

        Differentiable in ``t``; kept for the last 128 times per corruption when ``t`` needs no gradient.
        """
        mu, C = self.in_basis(corruption)
        gains = self._in_basis[corruption][2]
        key = None if t.requires_grad else float(t.reshape(-1)[0])
        if key is not None and key in gains:
            return gains[key]
        c = corruption.coefficients(t.reshape(1).to(f64))
        a = c.alpha.expand(1, *self.shape).reshape(self.dim)
        s2 = (2 * c.log_sigma).exp().expand(1, *self.shape).reshape(self.dim)
        K = a[:, None] * C * a[None] + torch.diag(s2)
        G = torch.cholesky_solve(a[:, None] * C, torch.linalg.cholesky(K)).T  # K symmetric: G = (K^-1 a C)^T
        value = (G, mu - G @ (a * mu))
        if key is not None:
            gains[key] = value
            while len(gains) > _CACHED_TIMES:
                gains.popitem(last=False)
        return value

    def model(self, corruption: DiagonalizableCorruption, prediction: str = "x") -> Callable[[Tensor, Tensor], Tensor]:
        """The exact denoiser ``E[x | z_t]`` as ``model(z_t, t)`` predicting ``prediction`` ("x", "eps", "v",
        "residual"; converted from x with :meth:`~lincorrupt.DiagonalizableCorruption.convert`), usable with
        :func:`lincorrupt.sample` and the samplers. ``z_t`` (B, *shape), ``t`` (B,); returns (B, *shape) in
        ``z_t``'s dtype. O(D^3) per distinct time (see :meth:`gain`)."""
        self._check(corruption)
        get_prediction(prediction)
        basis = corruption.basis

        def exact(z_t: Tensor, t: Tensor) -> Tensor:
            u = basis.to_basis(z_t.to(f64)).reshape(len(z_t), self.dim)
            rows = [slice(None)] if bool((t == t[:1]).all()) else [slice(i, i + 1) for i in range(len(t))]
            u_x = torch.cat([u[r] @ G.T + b for r in rows for G, b in [self.gain(corruption, t[r][:1])]])
            x = basis.from_basis(u_x.reshape(z_t.shape)).to(z_t.dtype)
            return x if prediction == "x" else corruption.convert(x, z_t, t, source="x", target=prediction)

        return exact

    # ------------------------------------------------------------------ the sampler's output
    def prior_moments(self, corruption: DiagonalizableCorruption, exact: bool = False) -> tuple[Tensor, Tensor]:
        """Mean (D,) and covariance (D, D) of the sampler's start ``u_1`` in basis coordinates, float64.

        ``exact``: the data's own marginal ``q(u_1) = N(a_1 mu, a_1 C a_1 + s_1^2)``; else the corruption's
        prior: :class:`~lincorrupt.priors.StandardNormalPrior` ``N(0, I)``, or
        :class:`~lincorrupt.priors.GaussianPrior` ``N(a_1 m, a_1^2 v + s_1^2)``. Any other prior (an
        :class:`~lincorrupt.priors.EmpiricalPrior`, a mixture) makes the output non-Gaussian: refused.
        """
        mu, C = self.in_basis(corruption)
        c_1 = corruption.coefficients(torch.ones(1, dtype=f64, device=mu.device))
        a = c_1.alpha.expand(1, *self.shape).reshape(self.dim)
        s2 = (2 * c_1.log_sigma).exp().expand(1, *self.shape).reshape(self.dim)
        prior = corruption.prior
        if exact:
            return a * mu, a[:, None] * C * a[None] + torch.diag(s2)
        if type(prior) is StandardNormalPrior:
            return torch.zeros_like(mu), torch.eye(self.dim, dtype=f64, device=mu.device)
        if type(prior) is GaussianPrior:
            m = torch.zeros_like(mu) if prior.mean is None else prior.mean.to(mu).expand(self.shape).reshape(-1)
            v = torch.ones_like(mu) if prior.var is None else prior.var.to(mu).expand(self.shape).reshape(-1)
            return a * m, torch.diag(a**2 * v + s2)
        raise ValueError(f"sample_kl needs a Gaussian start: {type(corruption).__name__}'s prior is "
                         f"{type(prior).__name__}, whose samples are not Gaussian; use a StandardNormalPrior or "
                         f"GaussianPrior, or exact_prior=True (the data's own q(u_1))")

    def output_moments(self, corruption: DiagonalizableCorruption, method: str, times: Tensor,
                       exact_prior: bool = False, **options) -> tuple[Tensor, Tensor]:
        """Exact mean (D,) and covariance (D, D) of ``method``'s output in basis coordinates, float64, with the
        exact denoiser on the decreasing ``times`` (N + 1,) from 1 to 0.

        A sampler that draws no noise (with these ``options``) is run as it is, by the library, on the prior's
        mean and the mean plus each column of a Cholesky root of the prior's covariance: it is affine, so the
        differences are a root of the output covariance. A rule that draws noise (:class:`Rule`
        ``u_s = k_u u_t + k_x x_hat + sqrt(var) n``) propagates mean and covariance step by step with its own
        coefficients. Differentiable in ``times``.
        """
        if method not in SAMPLERS:
            raise ValueError(f"unknown sampling method {method!r}; expected one of {sorted(SAMPLERS)}")
        sampler = SAMPLERS[method]
        mean, P = self.prior_moments(corruption, exact_prior)
        times = times.to(f64)
        rules = sampler.rules(corruption.coefficients(times), **options) if isinstance(sampler, RuleSampler) else None
        if rules is None or rules.var is None:
            probes = torch.cat([mean[None], mean + torch.linalg.cholesky(P).T]).reshape(self.dim + 1, *self.shape)
            y = sampler(Denoiser(self.model(corruption), corruption, "x"), corruption, probes, times, **options)
            y = y.reshape(self.dim + 1, self.dim)
            root = (y[1:] - y[0]).T
            return y[0], root @ root.T
        per_step = [v.expand(len(times) - 2, *self.shape).reshape(len(times) - 2, self.dim) for v in rules]
        for k in range(len(times) - 1):
            G, b = self.gain(corruption, times[k:k + 1])
            if k == len(times) - 2:
                return G @ mean + b, G @ P @ G.T
            k_u, k_x, var = (v[k] for v in per_step)
            M = torch.diag(k_u) + k_x[:, None] * G
            mean, P = M @ mean + k_x * b, M @ P @ M.T + torch.diag(var)
        raise AssertionError("unreachable: a grid has at least one interval")

    def kl(self, corruption: DiagonalizableCorruption, mean: Tensor, cov: Tensor) -> Tensor:
        """``KL(N(mean, cov) || N(self.mean, self.cov))`` in nats, from basis-coordinate moments (D,), (D, D)
        (an orthogonal change of coordinates leaves the KL unchanged); inf where ``cov`` is singular."""
        mu, C = self.in_basis(corruption)
        L = torch.linalg.cholesky(C)
        L_out, info = torch.linalg.cholesky_ex((cov + cov.T) / 2)
        if info != 0:
            return torch.tensor(math.inf, dtype=f64, device=mu.device)
        trace = torch.linalg.solve_triangular(L, L_out, upper=False).square().sum()
        diff = torch.linalg.solve_triangular(L, (mu - mean)[:, None], upper=False).square().sum()
        logdet = 2 * (L.diagonal().log().sum() - L_out.diagonal().log().sum())
        return 0.5 * (trace + diff - self.dim + logdet)

    def sample_kl(self, corruption: DiagonalizableCorruption, method: str, steps: int | None = None,
                  grid: str | Tensor = "uniform", exact_prior: bool = False, **options) -> Tensor:
        """The exact ``KL(p_sampler || N(mean, cov))`` in nats (a float64 scalar tensor) of what ``method``
        generates with the exact denoiser of these data (:meth:`output_moments`).

        Args:
            corruption: the forward process; its prior gives the start unless ``exact_prior``.
            method: a key of :data:`lincorrupt.SAMPLERS`.
            steps: network evaluations, for a named ``grid``.
            grid: a key of :data:`lincorrupt.GRIDS`, or a decreasing tensor of times from 1 to 0 (then the
                KL is differentiable in it for samplers that draw no noise, and for the rules).
            exact_prior: start from the data's own ``q(u_1)`` instead of the corruption's prior, so that
                the KL is the sampler's error alone.
            **options: the sampler's options, e.g. ``eta`` for "ddim".
        Cost: O(D^3) per grid time (:meth:`gain`).
        """
        times = grid_times(corruption, grid, steps, dtype=f64)
        return self.kl(corruption, *self.output_moments(corruption, method, times, exact_prior, **options))

    def __repr__(self) -> str:
        return f"GaussianData(shape={self.shape})"

