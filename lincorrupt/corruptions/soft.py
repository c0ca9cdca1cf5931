"""Soft Diffusion (Daras, Delbracio, Talebi, Dimakis & Milanfar 2022): Gaussian blur plus a little noise,
and the paper's choice of blur levels by Wasserstein-2 distance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..basis import Basis, DCTBasis, require_frequencies_squared
from ..coefficients import Coefficients
from ..corruption import DiagonalizableCorruption, FastSampling
from ..priors import GaussianPrior, Prior

__all__ = ["SoftDiffusion", "blur_w2_distances", "select_blur_levels"]


class SoftDiffusion(DiagonalizableCorruption):
    """``z_t = C_t x + s_t eps``: a Gaussian blur ``C_t`` and one small noise level, diagonal in the 2-D DCT.

    Per DCT frequency (k, l) with ``lambda[k, l] = (pi k / H)^2 + (pi l / W)^2`` (the basis's
    :attr:`~lincorrupt.Basis.frequencies_squared`):

        alpha_t[k, l] = exp(-lambda[k, l] sigma_B(t)^2 / 2)     (the DC coordinate keeps alpha = 1)
        sigma_t = noise_min (noise_max / noise_min)^t           (geometric, the same for every coordinate)

    ``sigma_B(t)`` is piecewise linear in t through the K ``blur_levels`` at ``t = k / (K - 1)``.
    By default the levels are equally spaced from ``sigma_blur_min`` to ``sigma_blur_max``;
    :meth:`fit` chooses them the paper's way, at equal Wasserstein-2 steps of the blurred data
    (:func:`select_blur_levels`). The paper fixes neither the noise schedule nor a data-free level
    spacing: geometric noise and equally spaced levels are lincorrupt's choice (a data-free
    stand-in: on Fashion-MNIST the W2 levels step by ~0.1 px at weak blur and by several px at the
    strongest). The default blur range is the paper's for CelebA-64, 0.01 to 23 px, with its upper end
    scaled to the image: ``23 * max(H, W) / 64`` px (10.06 at 28x28), so that the coarsest
    frequencies end as blurred, relative to the image, as the paper's (the lowest non-constant DCT
    frequency keeps ``alpha_1 = 0.53`` at any size; unscaled at 28x28 it would keep 0.04). Noise
    0.01 to 0.1 is on the [-1, 1] data scale. ``alpha_t`` is (B, 1, H, W), shared by the channels; ``sigma_t`` is
    (B, 1, 1, 1).

    Blurring never forgets the mean colour, so the t = 1 marginal is not N(0, I): the default
    prior is :class:`~lincorrupt.priors.GaussianPrior` (exact for white data); :meth:`fit` sets the
    one moment-matched to the data, or use ``EmpiricalPrior.fit(corruption, images)``. ``alpha`` is
    computed in log form, as for IHDM, because high frequencies underflow at strong blur.

    Args:
        shape: (C, H, W).
        blur_levels: (K,) non-decreasing blur standard deviations in pixels, K >= 2; None for
            ``num_levels`` equally spaced levels from ``sigma_blur_min`` to ``sigma_blur_max``.
        sigma_blur_min, sigma_blur_max: the default levels' range in pixels (paper, CelebA-64: 0.01, 23);
            ``sigma_blur_max=None``: ``23 * max(H, W) / 64`` (:func:`default_sigma_blur_max`).
        num_levels: K of the default levels (paper, CelebA-64: 32).
        noise_min, noise_max: ``sigma_t`` at t = 0 and t = 1 (0 < noise_min <= noise_max).
        prior: default moment-matched Gaussian with unit data variance.
        basis: default ``DCTBasis(H, W)``; any basis with ``frequencies_squared`` broadcastable to ``shape``
            is accepted, any other refused.
    """

    #: DPM-Solver++(3M) on the "info" grid: of every registered sampler and grid at 20 NFE, the lowest
    #: error with the exact denoiser of Fashion-MNIST's Gaussian fit at 28x28, for the default levels
    #: and the W2-fitted ones (Benchmarks page, "Soft Diffusion: every sampler and grid"); the grid
    #: needs no data statistics.
    fast_sampling = FastSampling("dpm++3m", "info", 20)

    def __init__(self, shape: tuple[int, int, int], blur_levels: Tensor | None = None, sigma_blur_min: float = 0.01,
                 sigma_blur_max: float | None = None, num_levels: int = 32, noise_min: float = 0.01,
                 noise_max: float = 0.1, prior: Prior | None = None, basis: Basis | None = None):
        if len(shape) != 3:
            raise ValueError(f"SoftDiffusion needs shape (C, H, W), got {shape}")
        if not 0 < noise_min <= noise_max:
            raise ValueError(f"need 0 < noise_min <= noise_max, got {noise_min}, {noise_max}")
        if blur_levels is None:
            sigma_blur_max = default_sigma_blur_max(shape) if sigma_blur_max is None else sigma_blur_max
            if not (0 <= sigma_blur_min <= sigma_blur_max and isinstance(num_levels, int) and num_levels >= 2):
                raise ValueError(f"need 0 <= sigma_blur_min <= sigma_blur_max and an int num_levels >= 2; got "
                                 f"{sigma_blur_min}, {sigma_blur_max}, {num_levels!r}")
            blur_levels = torch.linspace(sigma_blur_min, sigma_blur_max, num_levels, dtype=torch.float64)
        basis = basis if basis is not None else DCTBasis(shape[-2], shape[-1])
        require_frequencies_squared(basis, shape, type(self).__name__)
        super().__init__(shape, basis, prior if prior is not None else GaussianPrior())
        self.noise_min, self.noise_max = float(noise_min), float(noise_max)
        self.register_buffer("blur_levels", _check_levels(blur_levels))

    @classmethod
    def fit(cls, x: Tensor, num_levels: int = 32, sigma_blur_min: float = 0.01, sigma_blur_max: float | None = None,
            num_candidates: int = 1000, noise_aware: bool = False, **kwargs) -> SoftDiffusion:
        """A SoftDiffusion whose ``num_levels`` blur levels are chosen from data ``x`` the paper's way.

        The per-coordinate DCT (or ``basis``) mean and variance of ``x`` define the diagonal Gaussian approximation
        of the data; :func:`select_blur_levels` picks the levels from ``num_candidates`` equally
        spaced candidates in ``[sigma_blur_min, sigma_blur_max]``. Unless ``prior`` is given, the
        prior is the :class:`~lincorrupt.priors.GaussianPrior` with the same moments.

        The paper measures W2 between the blurred data, without the process noise; at strong blur
        the blurred coordinates fall below the noise, and ``noise_aware=True`` measures W2 between
        the marginals of ``z_t`` instead, each level with its own noise ``sigma_t`` (level k sits at
        ``t = k / (K - 1)``), so that the levels step equally in what the process actually shows.

        Args:
            x: (N, C, H, W) data in [-1, 1], N >= 2 (a few thousand images are plenty).
            num_levels: K (paper, CelebA-64: 32).
            sigma_blur_min, sigma_blur_max: first and last candidate in pixels (None: as in the constructor).
            num_candidates: how many candidate levels the path may choose from (>= num_levels).
            noise_aware: include the noise ``sigma_t`` of each level in the W2 distances (default:
                the paper's choice, the blurred data alone).
            **kwargs: the other arguments of :class:`SoftDiffusion` (noise_min, noise_max, prior, basis).
        """
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] < 2 or not x.is_floating_point():
            raise ValueError(f"SoftDiffusion.fit needs floating data of shape (N, C, H, W) with N >= 2, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        basis = kwargs.get("basis") or DCTBasis(x.shape[-2], x.shape[-1])
        frequencies_squared = require_frequencies_squared(basis, tuple(x.shape[1:]), "SoftDiffusion.fit")
        u = basis.to_basis(x.detach().to(frequencies_squared.device, torch.float64)).cpu()  # once, in float64
        mean, var = u.mean(0), u.var(0)
        if sigma_blur_max is None:
            sigma_blur_max = default_sigma_blur_max(tuple(x.shape[1:]))
        candidates = torch.linspace(sigma_blur_min, sigma_blur_max, num_candidates, dtype=torch.float64)
        noise = None
        if noise_aware:  # sigma_t at the K levels' times t = k / (K - 1), as the constructor defines it
            noise_min, noise_max = kwargs.get("noise_min", 0.01), kwargs.get("noise_max", 0.1)
            if not 0 < noise_min <= noise_max:
                raise ValueError(f"need 0 < noise_min <= noise_max, got {noise_min}, {noise_max}")
            noise = noise_min * (noise_max / noise_min) ** torch.linspace(0, 1, num_levels, dtype=torch.float64)
        levels = select_blur_levels(candidates, frequencies_squared.cpu(), mean, var, num_levels, noise=noise)
        kwargs.setdefault("prior", GaussianPrior(mean, var))
        return cls(tuple(x.shape[1:]), blur_levels=levels, **kwargs)

    def _log_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t.view(-1, 1, 1, 1)
        sigma_b = interpolate_levels(t, self.blur_levels.to(t.dtype))
        log_alpha = -self.basis.frequencies_squared.to(t.dtype) * (0.5 * sigma_b**2)
        log_sigma = math.log(self.noise_min) + t * math.log(self.noise_max / self.noise_min)
        return log_alpha, log_sigma

    def isotropic_schedule(self, logsnr: Tensor) -> tuple[Coefficients, Tensor]:
        """Without the blur: ``alpha = 1`` and the geometric noise, so ``l(t) = -2 log sigma_t`` falls at the
        constant rate ``2 log(noise_max / noise_min)``; refused where that is 0 (one noise level)."""
        if self.noise_max == self.noise_min:
            raise ValueError(f"SoftDiffusion with noise_min = noise_max = {self.noise_min} has a constant log-SNR "
                             f"without its blur, so the 'isotropic' weighting is undefined; use noise_max > noise_min")
        log_rate = torch.full_like(logsnr, math.log(2 * math.log(self.noise_max / self.noise_min)))
        return Coefficients(torch.zeros_like(logsnr), -0.5 * logsnr), log_rate

    def extra_repr(self) -> str:
        levels = self.blur_levels
        return (f"shape={self.shape}, blur_levels={len(levels)} in [{levels[0].item():.3g}, {levels[-1].item():.3g}], "
                f"noise=[{self.noise_min}, {self.noise_max}]")


def default_sigma_blur_max(shape: tuple[int, ...]) -> float:
    """The paper's largest blur for CelebA-64, 23 px, scaled to an image of ``shape`` (..., H, W):
    ``23 max(H, W) / 64`` pixels."""
    return 23.0 * max(shape[-2], shape[-1]) / 64


def interpolate_levels(t: Tensor, levels: Tensor) -> Tensor:
    """``sigma_B(t)``: piecewise linear in t through ``levels`` (K,) placed at ``t = k / (K - 1)``; ``t``'s shape."""
    position = t * (len(levels) - 1)
    lo = position.floor().clamp(0, len(levels) - 2)
    return torch.lerp(levels[lo.long()], levels[lo.long() + 1], position - lo)


def _check_levels(levels) -> Tensor:
    levels = torch.as_tensor(levels, dtype=torch.float64)
    if levels.ndim != 1 or len(levels) < 2 or not bool(torch.isfinite(levels).all()) or bool((levels < 0).any()):
        raise ValueError(f"blur_levels must be a 1-D tensor of at least 2 finite non-negative blur standard "
                         f"deviations in pixels, got {levels}")
    if bool((levels[1:] < levels[:-1]).any()):
        raise ValueError(f"blur_levels must be non-decreasing (more blur at later t), got {levels.tolist()}")
    return levels


def blur_w2_distances(sigma_a: Tensor, sigma_b: Tensor, frequencies_squared: Tensor, mean: Tensor,
                      var: Tensor, noise_a: Tensor | None = None, noise_b: Tensor | None = None) -> Tensor:
    """Wasserstein-2 distances between the diagonal Gaussian approximations of data blurred at two sets of levels.

    The data are ``N(m, diag(v))`` in DCT coordinates; blurring at level ``sigma`` scales coordinate k
    by ``a_k = exp(-lambda_k sigma^2 / 2)``, giving ``N(a m, diag(a^2 v))``. Between diagonal Gaussians

        W2^2 = ||m_1 - m_2||^2 + ||sqrt(v_1) - sqrt(v_2)||^2 = sum_k (a_k(sigma_i) - a_k(sigma_j))^2 (m_k^2 + v_k)

    (Daras et al. 2022, without the process noise). With ``noise_a`` and ``noise_b`` the
    Gaussians are the marginals of ``z = C x + s eps``, ``N(a m, diag(a^2 v + s^2))``, and

        W2^2 = sum_k (a_k(sigma_i) - a_k(sigma_j))^2 m_k^2
                   + (sqrt(a_k(sigma_i)^2 v_k + s_i^2) - sqrt(a_k(sigma_j)^2 v_k + s_j^2))^2

    Args:
        sigma_a: (M,) blur levels; sigma_b: (N,) blur levels.
        frequencies_squared: (H, W) ``lambda`` of :attr:`~lincorrupt.DCTBasis.frequencies_squared`.
        mean, var: (C, H, W) per-coordinate mean and variance of the data's DCT coordinates.
        noise_a, noise_b: (M,) and (N,) noise standard deviations at those levels, both or neither;
            with them the work and memory are O(M N C H W).
    Returns:
        (M, N) distances ``W2(sigma_a[i], sigma_b[j])``, float64.
    """
    if (noise_a is None) != (noise_b is None):
        raise ValueError("give the noise of both sets of levels (noise_a and noise_b) or of neither")
    if noise_a is not None:
        return _noisy_w2(sigma_a, sigma_b, frequencies_squared, mean.double(), var.double(), noise_a, noise_b)
    weight = (mean.double() ** 2 + var.double()).sqrt().flatten()

    def scaled(sigma: Tensor) -> Tensor:  # (M, C * H * W): a_k(sigma) sqrt(m_k^2 + v_k)
        decay = torch.exp(-frequencies_squared.double() * sigma.double().view(-1, 1, 1) ** 2 / 2)
        return decay.unsqueeze(1).expand(-1, *mean.shape).flatten(1) * weight

    return torch.cdist(scaled(sigma_a), scaled(sigma_b), compute_mode="donot_use_mm_for_euclid_dist")


def _noisy_w2(sigma_a, sigma_b, frequencies_squared, mean, var, noise_a, noise_b) -> Tensor:
    """:func:`blur_w2_distances` with each level's noise: (M, N) from (M, C*H*W) and (N, C*H*W) terms."""
    def terms(sigma: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:  # (len, C*H*W): a m and sqrt(a^2 v + s^2)
        sigma, noise = sigma.double().reshape(-1), noise.double().reshape(-1)
        if sigma.shape != noise.shape:
            raise ValueError(f"need one noise level per blur level, got {len(noise)} for {len(sigma)}")
        decay = torch.exp(-frequencies_squared.double() * sigma.view(-1, 1, 1) ** 2 / 2).unsqueeze(1)
        return (decay * mean).flatten(1), (decay**2 * var + noise.view(-1, 1, 1, 1) ** 2).sqrt().flatten(1)

    (mean_a, std_a), (mean_b, std_b) = terms(sigma_a, noise_a), terms(sigma_b, noise_b)
    return (((mean_a[:, None] - mean_b[None]) ** 2).sum(-1) + ((std_a[:, None] - std_b[None]) ** 2).sum(-1)).sqrt()


def select_blur_levels(candidates: Tensor, frequencies_squared: Tensor, mean: Tensor, var: Tensor,
                       num_levels: int, noise: Tensor | None = None) -> Tensor:
    """``num_levels`` blur levels from ``candidates`` at equal Wasserstein-2 steps (Daras et al. 2022).

    Candidate levels are the nodes of a graph with an edge wherever the W2 distance between the
    blurred data's Gaussian approximations (:func:`blur_w2_distances`) is at most ``epsilon``; the
    levels are the shortest path from the least to the most blurred candidate, and ``epsilon`` is
    bisected until that path has ``num_levels`` nodes. Blurring shrinks every coordinate
    monotonically, so the distance from level i grows with the level j > i, and the farthest
    reachable candidate first is a shortest path (found in O(M) per ``epsilon``).

    With ``noise`` (the process noise at the K levels) the k-th level of the path carries
    ``noise[k]``: the path is walked level by level, each step to the farthest candidate within
    ``epsilon`` of the current one, the distance including both levels' noise
    (:func:`blur_w2_distances` with ``noise_a``, ``noise_b``).

    Args:
        candidates: (M,) increasing blur levels in pixels.
        frequencies_squared, mean, var: as in :func:`blur_w2_distances`.
        num_levels: K, 2 <= K <= M.
        noise: (K,) noise standard deviation of each level, or None for the paper's noise-free W2.
    Returns:
        (K,) increasing levels, float64, from ``candidates[0]`` to ``candidates[-1]``.
    """
    candidates = candidates.double()
    if candidates.ndim != 1 or not bool((candidates[1:] > candidates[:-1]).all()):
        raise ValueError("candidates must be a 1-D tensor of increasing blur levels")
    if not isinstance(num_levels, int) or not 2 <= num_levels <= len(candidates):
        raise ValueError(f"num_levels must be an int in [2, {len(candidates)}] (the number of candidates), "
                         f"got {num_levels!r}")
    if noise is None:
        distances = blur_w2_distances(candidates, candidates, frequencies_squared, mean, var)
        row = lambda i, k: distances[i]  # noqa: E731
        hi = distances[0, -1].item()  # epsilon = hi joins the ends directly: 2 levels
    else:
        noise = torch.as_tensor(noise, dtype=torch.float64)
        if noise.shape != (num_levels,) or not bool((noise >= 0).all()):
            raise ValueError(f"noise must hold {num_levels} non-negative noise levels (one per level), got {noise}")
        rows: dict[tuple[int, int], Tensor] = {}  # (candidate, level index) -> distances to every next candidate

        def row(i: int, k: int) -> Tensor:
            if (i, k) not in rows:
                rows[i, k] = blur_w2_distances(candidates[i:i + 1], candidates, frequencies_squared, mean, var,
                                               noise[k:k + 1], noise[k + 1].expand(len(candidates)))[0]
            return rows[i, k]
        # no W2 between these Gaussians exceeds ||m|| + ||sqrt(v)|| + ||s_max||: joins the ends directly
        hi = (mean.double().square().sum().sqrt() + var.double().sqrt().square().sum().sqrt()
              + noise.max() * math.sqrt(mean.numel())).item() * 1.01
    lo = 0.0
    for _ in range(200):
        path = _farthest_first_path(row, len(candidates), (lo + hi) / 2, num_levels)
        if path is not None and len(path) == num_levels:
            return candidates[path]
        if path is None:  # epsilon too small: the last candidate is out of reach in num_levels levels
            lo = (lo + hi) / 2
        else:
            hi = (lo + hi) / 2
    raise ValueError(f"no epsilon gives a path of exactly {num_levels} levels (distances tie); "
                     f"use more candidates or another num_levels")


def _farthest_first_path(row, num_nodes: int, epsilon: float, max_nodes: int) -> list[int] | None:
    """The shortest path from node 0 to node ``num_nodes - 1`` of the graph whose edges from node i,
    as the path's k-th node, are ``row(i, k) <= epsilon``, jumping to the farthest reachable node
    each time; None if the last node cannot be reached within ``max_nodes`` nodes."""
    path = [0]
    while path[-1] < num_nodes - 1:
        if len(path) == max_nodes:
            return None
        reach = (row(path[-1], len(path) - 1) <= epsilon).nonzero()
        step = int(reach.max()) if len(reach) else -1
        if step <= path[-1]:
            return None
        path.append(step)
    return path
