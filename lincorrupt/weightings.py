r"""Loss weightings by name, each a function of every basis coordinate's own log-SNR, and an importance
proposal for the diffusion time.

Kingma & Gao (2023, "Understanding diffusion objectives as the ELBO with simple data augmentation"),
write a diffusion loss with a weighting ``w`` of the log-SNR ``l`` as

    L_w = 1/2 E_{t ~ U(0, 1), eps} [ w(l_t) (-d l_t / dt) ||eps - eps_hat(z_t, t)||^2 ]
        = 1/2 E_eps [ integral over l of w(l) ||eps - eps_hat||^2 dl ],

which depends on the noise schedule only through the end points of ``l``. In lincorrupt every basis
coordinate k has its own log-SNR ``l_k(t)`` (``corruption.coefficients(t).logsnr``), so the same holds
per coordinate: weighting coordinate k at time t by ``W_k = 1/2 w(l_k(t)) |d l_k / dt|`` on its squared
eps-error makes the loss a sum over coordinates of integrals over each coordinate's own log-SNR, whatever
the basis-dependent part of the schedule (a blur) does to its clock.

Every weighting returns the weight on the squared error of the model's *output* (its prediction kind):
an output error ``e`` is an x error ``(d x / d out) e`` and an eps error ``-(alpha / sigma) (d x / d out) e``,
so a weight ``W`` on the eps-error is ``W exp(l + 2 log |d x / d out|)`` on the output error.

The registry :data:`WEIGHTINGS` names them for :func:`lincorrupt.diffusion_loss` and the Trainer
(``TrainConfig(weighting=..., weighting_options={...})``):

- ``"none"``: no weight, the plain mean squared error of the output (Ho et al. 2020 for eps);
- ``"elbo"``: ``w = 1``, the continuous-time ELBO (Kingma et al. 2021, eq. 17);
- ``"sigmoid"``: ``w(l) = sigmoid(b - l)`` (Kingma & Gao 2023), option ``b``;
- ``"min-snr"``: the eps-error weight ``min(SNR, gamma) / SNR`` at uniform t (Hang et al. 2023), option
  ``gamma``;
- ``"soft-score"``: Soft Score Matching, ``alpha_t^2`` on the x error (Daras et al. 2022);
- ``"isotropic"``: the weighting in its own log-SNR that every coordinate would get, unweighted, under the
  corruption's schedule without its basis-dependent part (:meth:`~lincorrupt.DiagonalizableCorruption.
  isotropic_schedule`; for blurring diffusion, the cosine schedule without blur).

Shapes: ``t`` is (B,); weights broadcast to (B, *shape) in basis coordinates.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .coefficients import Coefficients
from .corruption import DiagonalizableCorruption
from .predictions import Prediction, get_prediction
from .validation import validate_args

__all__ = ["WEIGHTINGS", "Weighting", "get_weighting", "no_weighting", "elbo_weighting", "sigmoid_weighting",
           "min_snr_weighting", "soft_score_weighting", "snr_weighting", "isotropic_weighting", "TimeProposal",
           "TIME_SAMPLINGS", "time_proposal"]

#: ``weighting(corruption, t, prediction) -> w``: per-coordinate weights, broadcastable to
#: (B, *shape) in basis coordinates, on the squared error of the prediction.
Weighting = Callable[[DiagonalizableCorruption, Tensor, Prediction], Tensor]


def _on_output(c: Coefficients, prediction: Prediction, log_w_eps: Tensor) -> Tensor:
    """The weight on the squared output error from ``log W`` on the squared eps-error (module docstring)."""
    return torch.exp(log_w_eps + c.logsnr + 2 * prediction.log_x_scale(c))


def _log_rate(corruption: DiagonalizableCorruption, t: Tensor) -> Tensor:
    """``log |d l_k / dt|`` per coordinate at checked times ``t`` (B,)."""
    with validate_args(False):  # t is checked
        return corruption.d_log_snr_dt(t).abs().log()


def no_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction) -> None:
    """``"none"``: no weight; the loss is the plain mean squared error of the output (returns None)."""
    return None


def elbo_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction) -> Tensor:
    """Weights that make the loss the continuous-time diffusion ELBO term (VDM eq. 17).

    Per coordinate the ELBO integrand is ``-1/2 SNR'_i(t) (u_x - u_x_hat)_i^2``; an error
    ``e`` in the prediction is an error ``(d x / d out) e`` in x, so the weight on ``e^2`` is
    ``-1/2 SNR'(t) (d x / d out)^2 = -1/2 (d log SNR / dt) exp(log SNR + 2 log |d x / d out|)``
    (``-1/2 d log SNR / dt`` for eps-prediction): Kingma & Gao's ``w(l) = 1``. Use with ``reduction="sum"``
    for the bound in nats (without the prior and reconstruction terms).
    """
    t = corruption.check_time(t, "t")
    with validate_args(False):  # t is checked
        c, d_log_snr_dt = corruption.coefficients(t), corruption.d_log_snr_dt(t)
    return -0.5 * d_log_snr_dt * torch.exp(c.logsnr + 2 * prediction.log_x_scale(c))


def sigmoid_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction, *,
                      b: float = 0.0) -> Tensor:
    """``"sigmoid"``: ``w(l) = sigmoid(b - l)`` in each coordinate's own log-SNR (Kingma & Gao 2023, sec. 5).

    The weight on coordinate k's squared eps-error is ``1/2 sigmoid(b - l_k) |d l_k / dt|``: the ELBO's
    weight where ``l_k << b`` (noisy), fading out where ``l_k >> b`` (nearly clean); ``w = 1/2`` at ``l = b``.
    """
    t = corruption.check_time(t, "t")
    with validate_args(False):  # t is checked
        c = corruption.coefficients(t)
    log_w = math.log(0.5) + torch.nn.functional.logsigmoid(b - c.logsnr) + _log_rate(corruption, t)
    return _on_output(c, prediction, log_w)


def min_snr_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction, *,
                      gamma: float = 5.0) -> Tensor:
    """``"min-snr"``: Min-SNR-gamma (Hang et al. 2023), the eps-error weight ``min(SNR, gamma) / SNR``.

    Per coordinate, at uniform t (no ``|d l / dt|``: the paper's weight on the uniform-t loss). On the
    output error of x-prediction it is ``min(SNR, gamma)``, of v-prediction ``min(SNR, gamma) / (SNR + 1)``
    for a variance-preserving process (diffusers' training scripts). The paper's gamma: 5.
    """
    t = corruption.check_time(t, "t")
    with validate_args(False):  # t is checked
        c = corruption.coefficients(t)
    return _on_output(c, prediction, torch.clamp(math.log(gamma) - c.logsnr, max=0.0))


def soft_score_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction) -> Tensor:
    """``"soft-score"``: Soft Score Matching (Daras et al. 2022), the loss ``||C_t (x_hat - x)||^2``.

    ``C_t = V diag(alpha_t) V^T``, so per basis coordinate the weight on the squared x error is
    ``alpha_t^2``, and on the error of ``prediction`` ``alpha_t^2 (d x / d out)^2``. Returns a
    tensor broadcastable to (B, *shape).
    """
    t = corruption.check_time(t, "t")
    with validate_args(False):  # t is checked
        c = corruption.coefficients(t)
    return torch.exp(2 * (c.log_alpha + prediction.log_x_scale(c)))


def snr_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction) -> Tensor:
    """Soft Score Matching divided by the noise variance: ``||C_t (x_hat - x)||^2 / sigma_t^2``.

    Per basis coordinate the weight on the squared x error is ``SNR_t = alpha_t^2 / sigma_t^2``,
    which makes the loss the unweighted eps loss ``||eps - eps_hat||^2`` of the implied
    ``eps_hat = (u_t - alpha_t x_hat) / sigma_t`` (no division by alpha_t). Shapes as in
    :func:`soft_score_weighting`.
    """
    t = corruption.check_time(t, "t")
    with validate_args(False):  # t is checked
        c = corruption.coefficients(t)
    return torch.exp(c.logsnr + 2 * prediction.log_x_scale(c))


def isotropic_weighting(corruption: DiagonalizableCorruption, t: Tensor, prediction: Prediction) -> Tensor:
    """``"isotropic"``: every coordinate gets, in its own log-SNR, the weighting of the unweighted loss under
    the corruption's schedule without its basis-dependent part.

    That reference schedule (:meth:`~lincorrupt.DiagonalizableCorruption.isotropic_schedule`) gives the
    squared eps-error at log-SNR ``l`` the weight ``g(l) = exp(-l - 2 log |d x / d out|)`` (its coefficients)
    per unit of t, i.e. ``g(l) / |d l_ref / dt|`` per unit of log-SNR (Kingma & Gao's ``w(l) / 2``). So
    coordinate k at time t weighs its squared eps-error by

        W_k = g(l_k) |d l_k / dt| / |d l_ref / dt|(l_k),

    and the expected loss of every coordinate is the integral over its own log-SNR that the reference
    schedule gives every coordinate: a blurred coordinate is trained where it is informative, not where
    the blur's clock puts it. Without the basis-dependent part (blurring diffusion with
    ``sigma_blur_max = 0``) it is ``"none"``. Computed in log space, finite where ``alpha_t`` underflows.
    """
    t = corruption.check_time(t, "t")
    with validate_args(False):  # t is checked
        c = corruption.coefficients(t)
    reference, log_rate_reference = corruption.isotropic_schedule(c.logsnr)
    log_g = -(c.logsnr + 2 * prediction.log_x_scale(reference))
    return _on_output(c, prediction, log_g + _log_rate(corruption, t) - log_rate_reference)


#: The weightings by name: ``WEIGHTINGS[name](corruption, t, prediction, **options)`` returns the weight on
#: the squared output error per basis coordinate (None for ``"none"``); options are keyword-only with defaults.
WEIGHTINGS: dict[str, Callable[..., Tensor | None]] = {
    "none": no_weighting, "elbo": elbo_weighting, "sigmoid": sigmoid_weighting, "min-snr": min_snr_weighting,
    "soft-score": soft_score_weighting, "isotropic": isotropic_weighting,
}

#: Options that must be positive (the others need only be finite numbers).
_POSITIVE_OPTIONS = {"gamma"}


def get_weighting(weighting: str | Weighting | None, options: Mapping[str, float] | None = None) -> Weighting | None:
    """The weighting function a loss multiplies by: None for ``"none"`` (and None), a name of :data:`WEIGHTINGS`
    with its ``options`` bound, or a callable ``weighting(corruption, t, prediction)`` as it is.

    Raises:
        ValueError: an unknown name, an option the weighting does not take, or an option value that is not a
            finite number (``gamma`` must also be positive); options given with a callable.
    """
    options = dict(options or {})
    if weighting is None or callable(weighting):
        if options:
            raise ValueError(f"weighting_options {options} apply to a weighting given by name "
                             f"({sorted(WEIGHTINGS)}), not to {weighting!r}")
        return weighting
    if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {sorted(WEIGHTINGS)} or a callable "
                         f"weighting(corruption, t, prediction)")
    function = WEIGHTINGS[weighting]
    accepted = [p.name for p in inspect.signature(function).parameters.values() if p.kind == p.KEYWORD_ONLY]
    for name, value in options.items():
        if name not in accepted:
            raise ValueError(f"weighting {weighting!r} takes the options {accepted}, got {name!r}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or (name in _POSITIVE_OPTIONS and value <= 0):
            raise ValueError(f"weighting option {name}={value!r} must be a finite "
                             f"{'positive ' if name in _POSITIVE_OPTIONS else ''}number")
    if weighting == "none":
        return None
    return functools.partial(function, **{k: float(v) for k, v in options.items()}) if options else function


class TimeProposal:
    """An importance proposal for the diffusion time: a piecewise-constant density on K equal cells of [0, 1].

    Where a weighting's per-coordinate weights are peaked in t, uniform t wastes most draws where the
    weight is small and the loss's variance is large. :meth:`fit` builds the mixture

        p(t) = (1 - m) q(t) + m,   q = the mean weight over coordinates, piecewise constant on K cells
                                       (its value at each cell's midpoint), normalised to integrate to 1,

    with the uniform share ``m``; :meth:`sample` draws from it by its inverse CDF (exact), and
    :func:`lincorrupt.diffusion_loss` divides each example's weights by ``p(t)`` (:meth:`density`), so the
    loss stays an unbiased estimate of the uniform-t loss. Since ``p >= m``, the importance weight is at most
    ``1 / m`` and the second moment of the loss at most ``1 / m`` times that of uniform t.

    Args:
        density: (K,) positive values of p on the cells ``[j / K, (j + 1) / K)``, integrating to 1; the proposal
            keeps them on their device (that of the times it will sample: no copy per step).
    """

    def __init__(self, density: Tensor):
        density = torch.as_tensor(density, dtype=torch.float64)
        if density.ndim != 1 or len(density) < 1 or not bool((density > 0).all() & density.isfinite().all()):
            raise ValueError("density must be a non-empty 1-D tensor of finite positive values")
        if abs(density.mean().item() - 1) > 1e-9:
            raise ValueError(f"density must integrate to 1 over [0, 1] (mean 1 over the cells), got mean "
                             f"{density.mean().item():.6g}")
        self.cells = len(density)
        self.density_values = density
        self.cdf = torch.nn.functional.pad(torch.cumsum(density, 0) / self.cells, (1, 0))  # (K + 1,)

    @classmethod
    @torch.no_grad()
    def fit(cls, corruption: DiagonalizableCorruption, weighting: str | Weighting | None, prediction: str = "v",
            weighting_options: Mapping[str, float] | None = None, cells: int = 256,
            uniform_share: float = 0.1) -> TimeProposal:
        """The proposal of a weighting (class docstring): the mean weight over the coordinates at the K cell
        midpoints, in float64, mixed with the uniform share ``m`` (0 < m <= 1; 1 is uniform t)."""
        if not isinstance(cells, int) or cells < 1:
            raise ValueError(f"cells must be a positive int, got {cells!r}")
        if not 0 < uniform_share <= 1:
            raise ValueError(f"uniform_share must be in (0, 1], got {uniform_share}")
        function, pred = get_weighting(weighting, weighting_options), get_prediction(prediction)
        if function is None:
            return cls(torch.ones(cells, dtype=torch.float64))
        device = next((b.device for b in corruption.buffers()), torch.device("cpu"))  # where its schedule runs
        midpoints = (torch.arange(cells, dtype=torch.float64, device=device) + 0.5) / cells
        mean = torch.cat([function(corruption, t, pred).flatten(1).mean(1) for t in midpoints.split(16)])
        if not bool(mean.isfinite().all()) or not bool((mean >= 0).all()) or not bool(mean.sum() > 0):
            raise ValueError(f"the weighting {weighting!r} is not finite and non-negative on the {cells} cell "
                             f"midpoints of [0, 1], so it defines no proposal for t")
        return cls((1 - uniform_share) * mean / mean.mean() + uniform_share)  # on the corruption's device

    def sample(self, u: Tensor) -> Tensor:
        """Times ``t`` (B,) distributed by the proposal from uniform draws ``u`` (B,) in [0, 1): the inverse CDF."""
        cdf = self.cdf.to(u.device, u.dtype)
        cell = (torch.searchsorted(cdf[1:-1].contiguous(), u, right=True)).clamp(max=self.cells - 1)
        mass = self.density_values.to(u.device, u.dtype)[cell] / self.cells
        return ((cell + ((u - cdf[cell]) / mass).clamp(0, 1)) / self.cells).clamp(0, 1)

    def density(self, t: Tensor) -> Tensor:
        """``p(t)`` at times ``t`` (B,): the value of the cell holding each t (t = 1 in the last cell)."""
        cell = (t * self.cells).floor().long().clamp(0, self.cells - 1)
        return self.density_values.to(t.device, t.dtype)[cell]

    def __repr__(self) -> str:
        return (f"TimeProposal(cells={self.cells}, density in [{self.density_values.min().item():.3g}, "
                f"{self.density_values.max().item():.3g}])")


def uniform_time(corruption: DiagonalizableCorruption, weighting: str | Weighting | None, prediction: str = "v",
                 weighting_options: Mapping[str, float] | None = None) -> None:
    """``"uniform"``: no proposal, t ~ U(0, 1) (returns None)."""
    return None


#: How the Trainer draws t, by name: ``TIME_SAMPLINGS[name](corruption, weighting, prediction, weighting_options)``
#: returns a :class:`TimeProposal`, or None for uniform t.
TIME_SAMPLINGS: dict[str, Callable[..., TimeProposal | None]] = {"uniform": uniform_time,
                                                                  "importance": TimeProposal.fit}


def time_proposal(name: str, corruption: DiagonalizableCorruption, weighting: str | Weighting | None,
                  prediction: str = "v", weighting_options: Mapping[str, float] | None = None) -> TimeProposal | None:
    """The proposal :data:`TIME_SAMPLINGS` names (None: uniform t); ``ValueError`` for an unknown name."""
    if name not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time sampling {name!r}; expected one of {sorted(TIME_SAMPLINGS)}")
    return TIME_SAMPLINGS[name](corruption, weighting, prediction, weighting_options)
