"""``DiagonalizableCorruption``: a Gaussian diffusion that is diagonal in an orthogonal basis.

    q(z_t | x) = N(z_t | V diag(alpha_t) V^T x, V diag(sigma_t^2) V^T),   t in [0, 1]

(Hoogeboom & Salimans 2023, sec. 2.3). In coordinates ``u = V^T z`` every coordinate i is an
independent scalar diffusion with its own ``alpha_t[i]``, ``sigma_t[i]`` (Kingma et al. 2021).
A subclass names its basis and implements one hook, ``_alpha_sigma(t)`` (or, where ``alpha_t``
underflows, ``_log_alpha_sigma(t)``), which the public, checked
:meth:`~DiagonalizableCorruption.alpha_sigma` and :meth:`~DiagonalizableCorruption.log_alpha_sigma`
call after checking the times (a template method); transitions,
the posterior, prediction conversions, the SNR and its derivative, and the Markov validity
check are written once here, in log space where the naive form loses precision.

Shapes: ``x``, ``z_t`` are (B, *shape) in data space; ``u`` the same in basis coordinates;
times ``t``, ``s`` are (B,) or scalars; per-coordinate coefficients broadcast to (B, *shape).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .basis import Basis
from .coefficients import Coefficients, Transition, posterior_coefficients, transition
from .config import Configurable
from .predictions import get_prediction
from .priors import Prior, StandardNormalPrior
from .validation import check_finite, check_like, is_validating

__all__ = ["Gaussian", "DiagonalizableCorruption", "InvalidCorruptionError", "FastSampling"]


#: The validity check evaluates the schedule at this many coordinates' worth of times at once
#: (8 MB per float64 tensor), so memory stays bounded at any image size.
VALIDITY_CHUNK_ELEMENTS = 2**20


class InvalidCorruptionError(ValueError):
    """The schedule does not define a Markov diffusion (some coordinate's SNR increases)."""


class Gaussian(NamedTuple):
    """A diagonal Gaussian in basis coordinates: per-coordinate ``mean`` and ``var``."""

    mean: Tensor
    var: Tensor

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One draw ``mean + sqrt(var) * noise``, of the shape of ``mean``."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.var.sqrt() * noise


class FastSampling(NamedTuple):
    """A sampler, time grid and number of network evaluations: ``lc.sample(..., **setting._asdict())``."""

    method: str
    grid: str
    steps: int


class DiagonalizableCorruption(Configurable):
    """Base class of every corruption: per-coordinate ``alpha_t``, ``sigma_t`` in a basis ``V``.

    Subclasses call ``super().__init__(shape, basis, prior)``, register any schedule
    parameters as buffers, and implement one of two hooks, which receive checked (B,) times
    (a floating tensor, at least float32, in [0, 1]) and return tensors broadcastable to (B, *shape):

    - ``_alpha_sigma(self, t) -> (alpha_t, sigma_t)``, or
    - ``_log_alpha_sigma(self, t) -> (log alpha_t, log sigma_t)`` where ``alpha_t`` underflows.

    The public :meth:`alpha_sigma` and :meth:`log_alpha_sigma` check the times, then call the
    hook; a subclass does not override them (that is refused). After construction the Markov
    validity check (:meth:`check_validity`) runs
    automatically and refuses a schedule whose SNR increases in some coordinate. The
    constructor's arguments are recorded in ``self.config`` (:class:`~lincorrupt.config.Configurable`),
    so ``type(c)(**c.config)`` rebuilds the corruption and :func:`lincorrupt.load` rebuilds it from a file.

    Args:
        shape: event shape of one datum, e.g. (C, H, W).
        basis: the orthogonal basis V.
        prior: distribution of ``u_1`` for sampling; default standard normal.
    """

    #: How to sample this corruption in few steps: the registered sampler and grid with the lowest KL at
    #: 20 network evaluations for the exact denoiser of a Gaussian fitted to 28x28 Fashion-MNIST, checked
    #: on 32x32 grey CIFAR-10 (Benchmarks page). The base class's DPM-Solver++(3M) on the log-SNR grid is
    #: DDPM's; a subclass overrides it with what it measured. The Trainer's evaluator samples with it.
    fast_sampling: ClassVar[FastSampling] = FastSampling("dpm++3m", "logsnr", 20)

    def __init__(self, shape: tuple[int, ...], basis: Basis, prior: Prior | None = None):
        super().__init__()
        _check_hooks(type(self))
        self.shape = tuple(int(d) for d in shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
        basis.check_event_shape(self.shape)
        self.basis = basis
        self.prior = prior if prior is not None else StandardNormalPrior()
        #: The data's variance per basis coordinate, (*shape), float64; None until
        #: :meth:`fit_data_statistics` sets it (the "data" time grid reads it).
        self.register_buffer("data_var", None)

    def finish_init(self) -> None:
        """Once the outermost constructor has returned (the schedule is complete): :meth:`check_validity`."""
        self.check_validity()

    # ----------------------------------------------------------------- the schedule
    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Per-coordinate ``(alpha_t, sigma_t)`` in basis coordinates, at checked times.

        Checks ``t`` (:meth:`check_time`: a (B,) floating tensor or a scalar, in [0, 1] while
        validation is on), then calls the subclass's hook ``_alpha_sigma`` (or exponentiates
        ``_log_alpha_sigma``).

        Args:
            t: (B,) times in [0, 1], or a scalar (one time).
        Returns:
            Two tensors broadcastable to (B, *shape), e.g. (B, 1, H, W) or (B, 1, 1, 1).
        """
        return self._alpha_sigma(self.check_time(t, "t"))

    def log_alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(log alpha_t, log sigma_t)`` at checked times, as :meth:`alpha_sigma`; finite where
        ``alpha_t`` underflows (e.g. heat dissipation of high frequencies) if the subclass
        implements the hook ``_log_alpha_sigma``."""
        return self._log_alpha_sigma(self.check_time(t, "t"))

    def _alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Subclass hook: ``(alpha_t, sigma_t)`` at (B,) times already checked (floating, at least
        float32, in [0, 1]). Implement this or :meth:`_log_alpha_sigma`."""
        log_alpha, log_sigma = self._log_alpha_sigma(t)
        return log_alpha.exp(), log_sigma.exp()

    def _log_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Subclass hook: ``(log alpha_t, log sigma_t)`` at checked (B,) times; implement it instead of
        :meth:`_alpha_sigma` where ``alpha_t`` underflows. The library's own callers use this form."""
        alpha, sigma = self._alpha_sigma(t)
        return alpha.log(), sigma.log()

    def coefficients(self, t: Tensor | float, batch_size: int | None = None) -> Coefficients:
        """:class:`Coefficients` ``(log alpha_t, log sigma_t)`` at times ``t`` (B,), shaped (B, ...) for broadcasting.

        ``t`` is checked by :meth:`check_time` (its range while validation is on). Computed in ``t``'s
        dtype (at least float32); pass float64 times for float64 precision.
        """
        return self._coefficients(self.check_time(t, "t", batch_size))

    def _coefficients(self, t: Tensor) -> Coefficients:
        """:meth:`coefficients` at (B,) times that already passed :meth:`check_time` (the library's
        samplers, losses and grids check their times once). Checks only the hook's output shape."""
        log_alpha, log_sigma = self._log_alpha_sigma(t)
        target = (t.shape[0], *self.shape)
        for name, value in (("alpha", log_alpha), ("sigma", log_sigma)):
            if value.ndim != len(target) or torch.broadcast_shapes(value.shape, target) != target:
                raise ValueError(f"{type(self).__name__}'s schedule hook returned {name} of shape "
                                 f"{tuple(value.shape)}; expected a shape broadcastable to {target} "
                                 f"with the same number of dimensions")
        return Coefficients(log_alpha, log_sigma)

    def log_snr(self, t: Tensor | float) -> Tensor:
        """``log SNR_t[i] = log(alpha_t[i]^2 / sigma_t[i]^2)``, broadcastable to (B, *shape)."""
        return self.coefficients(t).logsnr

    def snr(self, t: Tensor | float) -> Tensor:
        """``SNR_t[i] = alpha_t[i]^2 / sigma_t[i]^2``."""
        return self.log_snr(t).exp()

    def d_log_snr_dt(self, t: Tensor | float) -> Tensor:
        """``d/dt log SNR_t[i]`` per coordinate, by forward-mode automatic differentiation.

        ``d/dt SNR = SNR * d/dt log SNR``; the continuous-time ELBO weight (VDM eq. 17) is
        ``-1/2 d/dt SNR_t``.
        """
        return self._d_log_snr_dt(self.check_time(t, "t"))

    def _d_log_snr_dt(self, t: Tensor) -> Tensor:
        """:meth:`d_log_snr_dt` at (B,) times that already passed :meth:`check_time`."""
        _, tangent = torch.func.jvp(lambda t: self._coefficients(t).logsnr, (t,), (torch.ones_like(t),))
        return tangent

    # ----------------------------------------------------------------- the process
    def transition(self, s: Tensor | float, t: Tensor | float) -> Transition:
        """``q(u_t | u_s)`` for ``0 <= s < t <= 1``: ``alpha_{t|s}``, ``sigma^2_{t|s}`` per coordinate."""
        s, t = self._check_pair(s, t)
        return transition(self._coefficients(s), self._coefficients(t))

    def diffuse(self, x: Tensor, t: Tensor | float, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample ``z_t ~ q(z_t | x)``: ``z_t = V (alpha_t V^T x + sigma_t V^T eps)``.

        Args:
            x: (B, *shape) data.
            t: (B,) times in [0, 1], or a scalar for the whole batch.
            noise: (B, *shape) standard normal noise ``eps`` in data space; drawn if None.
            generator: random generator used when ``noise`` is None.
        Returns:
            ``(z_t, eps)``, both (B, *shape) in ``x``'s dtype.
        """
        self.check_data(x)
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        else:
            self.check_like(noise, x, "noise")
        c = self._coefficients(self.check_time(t, "t", x.shape[0], x.device))
        u_t = c.alpha * self.basis.to_basis(x) + c.sigma * self.basis.to_basis(noise)
        return self.basis.from_basis(u_t).to(x.dtype), noise

    def posterior(self, z_t: Tensor, x: Tensor, s: Tensor | float, t: Tensor | float) -> Gaussian:
        """``q(u_s | u_t, x)`` per basis coordinate (Kingma et al. 2021, eq. 32-33).

        Args:
            z_t: (B, *shape) corrupted data at time t, data space.
            x: (B, *shape) clean data.
            s, t: (B,) or scalar times with ``0 <= s < t <= 1``.
        Returns:
            :class:`Gaussian` with ``mean`` and ``var`` (B, *shape) in basis coordinates.
        """
        self.check_data(x)
        self.check_like(z_t, x, "z_t")
        s, t = self._check_pair(s, t, x.shape[0], x.device)
        c_t, c_x, var = posterior_coefficients(self._coefficients(s), self._coefficients(t))
        mean = c_t * self.basis.to_basis(z_t) + c_x * self.basis.to_basis(x)
        return Gaussian(mean.to(x.dtype), var.expand(mean.shape).to(x.dtype))

    def convert(self, output: Tensor, z_t: Tensor, t: Tensor | float, source: str = "eps",
                target: str = "x") -> Tensor:
        """Convert a model output at ``(z_t, t)`` from one prediction kind to another.

        Args:
            output: (B, *shape) what the model predicts, of kind ``source``.
            z_t: (B, *shape) the model's input.
            t: (B,) or scalar time.
            source, target: "eps", "x" or "v" (see :mod:`lincorrupt.predictions`).
        Returns:
            (B, *shape) the prediction of kind ``target``, data space.
        """
        src, dst = get_prediction(source), get_prediction(target)
        self.check_data(z_t, "z_t")
        self.check_like(output, z_t, "output")
        c = self._coefficients(self.check_time(t, "t", z_t.shape[0], z_t.device))
        u_t, out = self.basis.to_basis(z_t), self.basis.to_basis(output)
        u_x, u_eps = src.to_x(c, u_t, out), src.to_eps(c, u_t, out)
        return self.basis.from_basis(dst.target(c, u_x, u_eps)).to(z_t.dtype)

    @torch.no_grad()
    def fit_data_statistics(self, x: Tensor) -> DiagonalizableCorruption:
        """Record ``data_var = Var[V^T x]`` per basis coordinate from a batch of data, and return self.

        Taken once from training data (e.g. a few thousand images in [-1, 1], as
        :meth:`GaussianPrior.fit <lincorrupt.priors.GaussianPrior.fit>` does); the "data" time
        grid (:func:`~lincorrupt.sampling.grids.data_grid`) weights each coordinate's SNR by it.
        Stored in float64 as the buffer ``data_var`` (*shape), so it moves with ``.to(device)``
        and travels in the state dict. A coordinate that never varies gets the floor 1e-12.

        Args:
            x: (N, *shape) data, N >= 2.
        """
        self.check_data(x)
        if x.shape[0] < 2:
            raise ValueError(f"fit_data_statistics needs at least 2 data points to estimate a variance, got "
                             f"{x.shape[0]}")
        u = self.basis.to_basis(x.double())
        self.data_var = u.var(0, correction=1).clamp(min=1e-12)
        return self

    # ----------------------------------------------------------------- validity
    @torch.no_grad()
    def check_validity(self, num_times: int = 1001) -> None:
        """Raise :class:`InvalidCorruptionError` unless ``q`` is a Markov diffusion.

        The process is Markov iff ``sigma^2_{t|s} >= 0`` for all ``s < t``, i.e. iff every coordinate's
        SNR is non-increasing in t. On ``num_times`` equally spaced float64 times this checks that
        ``alpha_t`` and ``sigma_t`` are finite, ``sigma_t > 0`` for ``t > 0``, ``alpha_t > 0`` for ``t < 1``
        and that no log-SNR rises by more than ``1e-9 (1 + |log SNR|)`` from one time to the next.
        The schedule is evaluated at the shape it returns (e.g. (N, 1, H, W), never expanded over
        channels), in chunks of at most 64 times and ``VALIDITY_CHUNK_ELEMENTS`` coordinates; each
        chunk repeats the last time of the one before, so the comparison crosses chunk boundaries.
        """
        times = torch.linspace(0, 1, num_times, dtype=torch.float64, device=self._device())
        chunk = max(1, min(64, VALIDITY_CHUNK_ELEMENTS // math.prod(self.shape)))
        for start in range(0, num_times, chunk):
            t = times[max(start - 1, 0):start + chunk]
            c = self._coefficients(t)
            inside = t.view(-1, *[1] * len(self.shape))
            logsnr = c.logsnr
            faults = (("alpha_t is not a finite non-negative number", ~torch.isfinite(c.alpha), c.alpha),
                      ("sigma_t is not a finite non-negative number", ~torch.isfinite(c.sigma), c.sigma),
                      ("sigma_t = 0 at t > 0 (only t = 0 may be noise-free)",
                       (c.log_sigma == -torch.inf) & (inside > 0), c.sigma),
                      ("alpha_t = 0 at t < 1 (only t = 1 may have lost all signal)",
                       (c.log_alpha == -torch.inf) & (inside < 1), c.alpha))
            for what, bad, value in faults:
                if bool(bad.any()):
                    k, *coord = (int(i) for i in bad.nonzero()[0])
                    raise InvalidCorruptionError(f"{type(self).__name__}: {what}; at t={t[k].item():.6g}, basis "
                                                 f"coordinate {tuple(coord)} the value is "
                                                 f"{value.expand(bad.shape)[(k, *coord)].item()}")
            before, after = logsnr[:-1], logsnr[1:]
            rising = after > before + 1e-9 * (1 + before.abs().nan_to_num(0, 0, 0))
            if bool(rising.any()):
                k, *coord = (int(i) for i in rising.nonzero()[0])
                before, after = (v.expand(rising.shape)[(k, *coord)].item() for v in (before, after))
                raise InvalidCorruptionError(
                    f"{type(self).__name__}: SNR increases in basis coordinate {tuple(coord)} between "
                    f"t={t[k].item():.6g} and t={t[k + 1].item():.6g} (log-SNR {before:.6g} -> {after:.6g}); "
                    f"then sigma^2_(t|s) < 0 and q(z_t | x) is not a Markov diffusion. The SNR of every "
                    f"coordinate must be non-increasing in t.")

    # ----------------------------------------------------------------- input checks
    def _device(self) -> torch.device:
        """The device of the corruption's buffers (CPU if it has none)."""
        return next((b.device for b in self.buffers()), torch.device("cpu"))

    def check_data(self, x: Tensor, name: str = "x") -> None:
        """``ValueError``/``TypeError`` unless ``x`` is a floating (B, *shape) tensor on our device
        and, while validation is on, finite (no NaN or Inf)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point (data scaled to [-1, 1]), got dtype {x.dtype}")
        if x.ndim != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{name} must have shape (B, {', '.join(map(str, self.shape))}) for "
                             f"{type(self).__name__}(shape={self.shape}), got {tuple(x.shape)}")
        for buffer in self.buffers():
            if buffer.device != x.device:
                raise ValueError(f"{name} is on {x.device} but {type(self).__name__}'s buffers are on "
                                 f"{buffer.device}; move one with .to(device)")
            break
        check_finite(x, name)

    @staticmethod
    def check_like(y: Tensor, x: Tensor, name: str) -> None:
        """``TypeError``/``ValueError`` unless ``y`` (called ``name``) is a tensor of ``x``'s shape, device
        and dtype and, while validation is on, finite (:func:`lincorrupt.validation.check_like`)."""
        check_like(y, x, name)

    def check_time(self, t: Tensor | float, name: str = "t", batch_size: int | None = None,
                   device: torch.device | None = None) -> Tensor:
        """``t`` as a (B,) floating tensor (at least float32) of times in [0, 1]; scalars are
        expanded to ``batch_size``. ``name`` names ``t`` in errors; ``device`` is where it must be.
        The range is checked while validation is on (:func:`lincorrupt.set_validate_args`)."""
        if not isinstance(t, Tensor):
            t = torch.tensor(float(t), device=device if device is not None else self._device())
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor of times in [0, 1], got dtype {t.dtype}")
        if device is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but the data are on {device}")
        if t.ndim == 0:
            t = t.expand(batch_size if batch_size is not None else 1)
        if t.ndim != 1 or (batch_size is not None and t.shape[0] != batch_size):
            expected = f"({batch_size},)" if batch_size is not None else "(B,)"
            raise ValueError(f"{name} must have shape {expected} or be a scalar, got {tuple(t.shape)}")
        if is_validating() and not bool(((t >= 0) & (t <= 1)).all()):
            bad = t[~((t >= 0) & (t <= 1))][0].item()
            raise ValueError(f"{name} must lie in [0, 1], got {bad:.6g}")
        return t.to(torch.promote_types(t.dtype, torch.float32))

    def _check_pair(self, s, t, batch_size: int | None = None, device=None) -> tuple[Tensor, Tensor]:
        if batch_size is None:
            for v in (s, t):
                if isinstance(v, Tensor) and v.ndim == 1:
                    batch_size = v.shape[0]
        s = self.check_time(s, "s", batch_size, device)
        t = self.check_time(t, "t", batch_size, device)
        if is_validating() and not bool((s < t).all()):
            k = int((s >= t).nonzero()[0])
            raise ValueError(f"need s < t, got s={s[k].item():.6g} >= t={t[k].item():.6g}")
        dtype = torch.promote_types(s.dtype, t.dtype)
        return s.to(dtype), t.to(dtype)

    def _apply(self, fn, recurse=True):
        """Move buffers with ``.to(device)``, but never narrow a floating buffer's dtype:
        under ``.half()`` or ``.to(torch.bfloat16)`` the schedule's tables (frequencies, log
        alphabar, the DCT matrices, priors) keep their float32 / float64 precision, so the
        coefficients stay as exact as before whatever dtype the module is cast to."""
        def never_narrower(tensor: Tensor) -> Tensor:
            moved = fn(tensor)
            if tensor.is_floating_point() and torch.promote_types(tensor.dtype, moved.dtype) != moved.dtype:
                return tensor.to(moved.device)
            return moved

        return super()._apply(never_narrower, recurse)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _check_hooks(cls: type) -> None:
    """``TypeError`` unless ``cls`` implements a schedule hook and leaves the checked public methods alone."""
    base = DiagonalizableCorruption
    for public in ("alpha_sigma", "log_alpha_sigma"):
        if getattr(cls, public) is not getattr(base, public):
            raise TypeError(f"{cls.__name__} overrides {public}(t), the public method that checks the times; "
                            f"implement the hook _{public}(t) instead (it receives checked (B,) times)")
    if cls._alpha_sigma is base._alpha_sigma and cls._log_alpha_sigma is base._log_alpha_sigma:
        raise TypeError(f"{cls.__name__} must implement the hook _alpha_sigma(t) or _log_alpha_sigma(t)")
