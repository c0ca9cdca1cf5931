"""Spectral diagnostics in the orthonormal 2-D DCT-II basis, per band of radial frequency.

- :func:`radial_bands`, :func:`power_spectrum`, :func:`spectrum_ratio`: the radially averaged DCT power spectrum
  of samples relative to reference images; a ratio above 1 in the high bands is the "noisy texture" of samples.
- :class:`GaussianFit`, :func:`wiener_x_hat`: the linear (Wiener) estimator ``E[x | z_t]`` of the data's Gaussian
  fit, for any :class:`~lincorrupt.DiagonalizableCorruption`.
- :func:`band_error_ratio`, :func:`denoising_band_errors`: a network's per-band error of ``x_hat`` relative to the
  Wiener estimator's; a ratio above 1 is worse than linear.

Images are (N, C, H, W), nominally in [-1, 1] (not enforced: samples and errors may leave it). Powers are summed
in float64, the Gaussian fit and the Wiener solve are float64; everything stays on the images' device.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from ..basis import Basis, DCTBasis
from ..corruption import DiagonalizableCorruption
from ..sampling.denoiser import Denoiser
from ..validation import validate_args

__all__ = ["radial_bands", "power_spectrum", "spectrum_ratio", "GaussianFit", "wiener_x_hat", "band_error_ratio",
           "denoising_band_errors"]

f64 = torch.float64
_INTEGER = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _count(value, name: str, minimum: int = 1) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _isqrt(a: Tensor) -> Tensor:
    """``floor(sqrt(a))`` of a non-negative int64 tensor, exactly (float sqrt, then a one-step integer correction)."""
    q = a.double().sqrt().long()
    q = q - (q * q > a).long()
    return q + ((q + 1) * (q + 1) <= a).long()


def radial_bands(height: int, width: int, num_bands: int | None = None) -> Tensor:
    """Band index of each DCT-II coordinate (k, l) by its radial frequency, (H, W) int64 on the CPU.

    The radial frequency is ``rho[k, l] = sqrt((k / H)^2 + (l / W)^2)``, i.e. ``sqrt(lambda[k, l]) / pi`` with
    ``lambda`` of :attr:`lincorrupt.DCTBasis.frequencies_squared`: heat dissipation decays every coordinate of
    a band about alike. Bands are equal-width bins of ``rho``, band 0 holding the DC:

    - ``num_bands=None``: width ``1 / max(H, W)``, so for square images ``band = floor(sqrt(k^2 + l^2))``, the
      integer radius, with the DC alone in band 0 (``floor(sqrt(2) (H - 1)) + 1`` bands);
    - ``num_bands=n``: width ``rho_max / n`` with ``rho_max = rho[H - 1, W - 1]`` (the last bin closed).

    Computed in integer arithmetic (``rho^2 (H W)^2 = (k W)^2 + (l H)^2``), so no band edge depends on rounding.

    Raises:
        ValueError: if some band would hold no coordinate (``num_bands`` too large for the image size).
    """
    h, w = _count(height, "height"), _count(width, "width")
    k, m = torch.arange(h)[:, None], torch.arange(w)[None, :]  # coordinate (k, l = m)
    r2 = (k * w) ** 2 + (m * h) ** 2  # rho^2 (h w)^2
    if num_bands is None:  # floor(max(h, w) rho)
        bands = _isqrt(max(h, w) ** 2 * r2 // (h * w) ** 2)
        n = int(bands.max()) + 1
    else:  # min(floor(n rho / rho_max), n - 1)
        n = _count(num_bands, "num_bands")
        bands = _isqrt(n**2 * r2 // max(int(r2[-1, -1]), 1)).clamp(max=n - 1)
    counts = torch.bincount(bands.flatten(), minlength=n)
    if (counts == 0).any():
        raise ValueError(f"num_bands={num_bands} leaves band {int((counts == 0).nonzero()[0])} of a {h}x{w} DCT empty; "
                         f"choose fewer bands")
    return bands


def _images(x, name: str) -> Tensor:
    """``x`` checked: a real floating (N, C, H, W) tensor with N >= 1 and only finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point (images in [-1, 1]), got dtype {x.dtype}")
    if x.ndim != 4 or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty batch of images (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf) among {x.numel()}; expected finite images")
    return x


def _band_means(bands, height: int, width: int, device: torch.device) -> Tensor:
    """The (num_bands, H W) float64 matrix that averages a flattened (H, W) map over each band, from ``bands``."""
    if not isinstance(bands, Tensor) or bands.dtype not in _INTEGER:
        raise TypeError(f"bands must be an integer tensor of band indices (see radial_bands), got {bands!r:.60}")
    if tuple(bands.shape) != (height, width):
        raise ValueError(f"bands must have the images' (H, W) = ({height}, {width}), got {tuple(bands.shape)}")
    bands = bands.to(device, torch.int64).flatten()
    if int(bands.min()) < 0:
        raise ValueError(f"band indices must be >= 0, got {int(bands.min())}")
    onehot = torch.nn.functional.one_hot(bands).T.to(f64)  # (num_bands, H W); a matmul, deterministic on CUDA
    counts = onehot.sum(1, keepdim=True)
    if (counts == 0).any():
        raise ValueError(f"band {int((counts[:, 0] == 0).nonzero()[0])} holds no coordinate; band indices must "
                         f"run from 0 to num_bands - 1 without gaps")
    return onehot / counts


def _power(x: Tensor, bands) -> Tensor:
    """:func:`power_spectrum` of already checked images."""
    u = DCTBasis(*x.shape[-2:]).to(x.device).to_basis(x)  # orthonormal DCT-II, at least float32
    per_coordinate = u.square().sum(dim=(0, 1), dtype=f64).flatten() / (x.shape[0] * x.shape[1])  # (H W,)
    return _band_means(bands, *x.shape[-2:], x.device) @ per_coordinate


def power_spectrum(x: Tensor, bands: Tensor) -> Tensor:
    """Radially averaged DCT power spectrum ``P[b] = mean_{n, c, (k, l) in b} u[n, c, k, l]^2``.

    ``u = D_H x D_W^T`` is the orthonormal 2-D DCT-II of each image and channel (:class:`lincorrupt.DCTBasis`);
    the mean runs over images, channels and the coordinates of band ``b``. The transform is orthonormal, so
    white noise of variance ``v`` adds ``v`` to every band.

    Args:
        x: (N, C, H, W) images, N >= 1, finite.
        bands: (H, W) integer band index of each coordinate, 0 to num_bands - 1, none empty (:func:`radial_bands`).

    Returns:
        (num_bands,) float64 on ``x``'s device.
    """
    return _power(_images(x, "x"), bands)


def _ratio(numerator: Tensor, denominator: Tensor, what: str) -> Tensor:
    zero = denominator <= 0
    if zero.any():
        raise ValueError(f"{what} is 0 in band {int(zero.nonzero()[0])}, so the ratio is undefined there")
    return numerator / denominator


def spectrum_ratio(samples: Tensor, reference: Tensor, bands: Tensor) -> Tensor:
    """``power_spectrum(samples)[b] / power_spectrum(reference)[b]`` per band: 1 where the samples have the
    reference's power, above 1 where they have too much (high bands: noisy texture).

    Args:
        samples: (N, C, H, W) generated images.
        reference: (M, C, H, W) reference (test) images, same (C, H, W).
        bands: (H, W) band indices (:func:`radial_bands`).

    Returns:
        (num_bands,) float64; ``ValueError`` if the reference has no power in some band.
    """
    samples, reference = _images(samples, "samples"), _images(reference, "reference")
    if samples.shape[1:] != reference.shape[1:] or samples.device != reference.device:
        raise ValueError(f"samples and reference must be images of the same (C, H, W) on one device, got "
                         f"{tuple(samples.shape)} on {samples.device}, {tuple(reference.shape)} on {reference.device}")
    return _ratio(_power(samples, bands), _power(reference, bands), "the reference's power")


class GaussianFit(NamedTuple):
    """A Gaussian ``N(m, S)`` fitted to data, kept in data space (``mean`` (*shape), ``cov`` (D, D), D = prod(shape),
    float64), so one fit serves corruptions in any basis: :meth:`in_basis` gives ``mu = V^T m``, ``C = V^T S V``."""

    mean: Tensor
    cov: Tensor

    @classmethod
    def of(cls, x: Tensor, ridge: float = 1e-4) -> GaussianFit:
        """Sample mean and unbiased sample covariance of ``x`` (N, *shape), N >= 2, plus ``ridge * I``.

        The ridge floors every direction's variance: the sample covariance is singular when N <= D or where
        pixels are constant (Fashion-MNIST's borders), and the Wiener solve must stay well posed as
        ``sigma_t -> 0``. 1e-4 is a standard deviation of 0.01 on the [-1, 1] scale, about one 8-bit level (2/255).
        """
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] < 2:
            raise ValueError(f"GaussianFit.of needs a floating tensor (N, *shape) with N >= 2 images, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not (math.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
        flat = x.to(f64).flatten(1)
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("x has non-finite values (NaN or inf); expected finite images")
        mean = flat.mean(0)
        centred = flat - mean
        cov = centred.T @ centred / (len(flat) - 1) + ridge * torch.eye(flat.shape[1], dtype=f64, device=x.device)
        return cls(mean.view(x.shape[1:]), cov)

    def in_basis(self, basis: Basis) -> tuple[Tensor, Tensor]:
        """``(mu, C)`` in ``basis``'s coordinates: ``mu = V^T m`` (D,) and ``C = V^T S V`` (D, D), float64."""
        d, shape = self.cov.shape[0], self.mean.shape

        def rows(matrix: Tensor) -> Tensor:  # V^T applied to every row: M V
            return basis.to_basis(matrix.view(d, *shape)).reshape(d, d)

        c = rows(rows(self.cov).T)  # (S V)^T V = V^T S V for symmetric S
        return basis.to_basis(self.mean[None])[0].flatten(), (c + c.T) / 2


def wiener_x_hat(fit: GaussianFit, corruption: DiagonalizableCorruption, z_t: Tensor, t: Tensor | float) -> Tensor:
    """``E[x | z_t]`` under ``x ~ fit``: the linear MMSE (Wiener) estimator, for any diagonalizable corruption.

    In the corruption's basis ``u = V^T x`` with ``mu``, ``C`` from :meth:`GaussianFit.in_basis` and
    ``u_t = a * u_x + s * n`` (``a = alpha_t``, ``s = sigma_t`` per coordinate), Gaussian conditioning gives

        E[u_x | u_t] = mu + C a (a C a + diag(s^2))^-1 (u_t - a mu)

    solved by a float64 Cholesky factorisation per distinct time (O(D^3) each, O(D^2) memory).

    Args:
        fit: the data's Gaussian fit, of event shape ``corruption.shape``.
        corruption: any :class:`~lincorrupt.DiagonalizableCorruption`.
        z_t: (B, *shape) corrupted data.
        t: (B,) times in [0, 1], or a scalar.

    Returns:
        (B, *shape) ``x_hat`` in data space, ``z_t``'s dtype.
    """
    corruption.check_data(z_t, "z_t")
    b, d, basis = z_t.shape[0], math.prod(corruption.shape), corruption.basis
    if tuple(fit.mean.shape) != corruption.shape or tuple(fit.cov.shape) != (d, d):
        raise ValueError(f"the fit has mean {tuple(fit.mean.shape)} and covariance {tuple(fit.cov.shape)}; the "
                         f"corruption needs {corruption.shape} and {(d, d)}")
    t = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=f64, device=z_t.device)  # a float: exactly
    t = corruption.check_time(t, "t", b, z_t.device).to(f64)
    mu, cov = GaussianFit(fit.mean.to(z_t.device, f64), fit.cov.to(z_t.device, f64)).in_basis(basis)
    with validate_args(False):  # t is checked
        c = corruption.coefficients(t)
    a = c.alpha.expand(b, *corruption.shape).reshape(b, d)
    s2 = (2 * c.log_sigma).exp().expand(b, *corruption.shape).reshape(b, d)
    u_t = basis.to_basis(z_t.to(f64)).reshape(b, d)
    u_x = torch.empty_like(u_t)
    for time in torch.unique(t):
        rows = (t == time).nonzero()[:, 0]
        a_j, s2_j = a[rows[0]], s2[rows[0]]
        factor, info = torch.linalg.cholesky_ex(a_j[:, None] * cov * a_j + torch.diag(s2_j))
        if int(info):
            raise ValueError(f"a C a + diag(sigma_t^2) is not positive definite at t={time.item():.6g}; "
                             f"fit with a larger ridge")
        gain_input = torch.cholesky_solve((u_t[rows] - a_j * mu).T, factor)  # (a C a + s^2)^-1 (u_t - a mu)
        u_x[rows] = mu + (cov @ (a_j[:, None] * gain_input)).T
    return basis.from_basis(u_x.view(b, *corruption.shape)).to(z_t.dtype)


def band_error_ratio(x: Tensor, x_hat_model: Tensor, x_hat_wiener: Tensor, bands: Tensor) -> Tensor:
    """``mean_b (U_model - U)^2 / mean_b (U_wiener - U)^2`` per band ``b``, in DCT-II coordinates ``U``.

    The model's mean squared error of ``x_hat`` against the true ``x`` relative to the Wiener estimator's
    (:func:`wiener_x_hat`), each the :func:`power_spectrum` of the error: 1 is as good as linear, above 1 worse.

    Args:
        x: (N, C, H, W) the clean images.
        x_hat_model, x_hat_wiener: (N, C, H, W) the two estimates of ``x``.
        bands: (H, W) band indices (:func:`radial_bands`).

    Returns:
        (num_bands,) float64; ``ValueError`` if the Wiener error is 0 in some band.
    """
    x = _images(x, "x")
    for name, estimate in (("x_hat_model", x_hat_model), ("x_hat_wiener", x_hat_wiener)):
        if _images(estimate, name).shape != x.shape or estimate.device != x.device:
            raise ValueError(f"{name} must hold one estimate per image of x, {tuple(x.shape)} on {x.device}; got "
                             f"{tuple(estimate.shape)} on {estimate.device}")
    return _ratio(_power(x_hat_model - x, bands), _power(x_hat_wiener - x, bands), "the Wiener estimator's error")


@torch.no_grad()
def denoising_band_errors(model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption,
                          fit: GaussianFit, x: Tensor, times: Iterable[float], bands: Tensor, prediction: str = "v",
                          generator: torch.Generator | None = None,
                          batch_size: int | None = None) -> dict[float, Tensor]:
    """:func:`band_error_ratio` of ``model`` against the Wiener estimator at each time: what the network has not
    learned that a linear filter of the data's Gaussian fit knows.

    At each ``t``, ``z_t ~ q(z_t | x)`` is drawn once (:meth:`~lincorrupt.DiagonalizableCorruption.diffuse`) and
    both estimators see the same ``z_t``: the model through :class:`lincorrupt.Denoiser` (its ``prediction``
    converted to ``x_hat`` as the samplers do), the fit through :func:`wiener_x_hat`. Put the model in eval mode.

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape.
        corruption: the corruption the model was trained with.
        fit: the Gaussian fit of the training data (:meth:`GaussianFit.of`).
        x: (N, C, H, W) clean (test) images on the model's device.
        times: the times t in [0, 1], e.g. (0.1, 0.15, 0.2, 0.3).
        bands: (H, W) band indices (:func:`radial_bands`).
        prediction: what the model outputs: "eps", "x" or "v".
        generator: random generator of the noise.
        batch_size: images per model call (all at once if None).

    Returns:
        ``{t: (num_bands,) float64 ratios}``, in the order of ``times``.
    """
    x = _images(x, "x")
    denoiser, basis = Denoiser(model, corruption, prediction), corruption.basis
    chunk = x.shape[0] if batch_size is None else _count(batch_size, "batch_size")
    ratios = {}
    for time in times:
        t = torch.full((x.shape[0],), float(time), dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        z_t, _ = corruption.diffuse(x, t, generator=generator)
        coefficients = corruption.coefficients(t[:1])
        x_hat = torch.cat([basis.from_basis(denoiser.x_hat(basis.to_basis(z), t[:1], coefficients))
                           for z in z_t.split(chunk)])
        ratios[float(time)] = band_error_ratio(x, x_hat, wiener_x_hat(fit, corruption, z_t, t), bands)
    return ratios
