"""What a model predicts: the noise ("eps"), the data ("x"), the velocity ("v") or the data as a
residual of its input ("residual", Soft Diffusion's parametrisation ``x_hat = z_t + out``).

All conversions are per coordinate in the corruption's basis, where
``u_t = alpha_t u_x + sigma_t u_eps`` (``u = V^T z``). The velocity generalises Salimans &
Ho (2022) to processes that are not variance preserving:

    v = (alpha_t eps - sigma_t x) / scale_t,   scale_t = sqrt(alpha_t^2 + sigma_t^2)

(``scale_t`` is :attr:`Coefficients.velocity_scale`), so that
``x = (alpha_t u_t - sigma_t scale_t v) / scale_t^2`` and ``eps = (sigma_t u_t + alpha_t scale_t v) / scale_t^2``
never divide by alpha_t or sigma_t; for a variance-preserving process ``scale_t = 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .coefficients import Coefficients

__all__ = ["Prediction", "PREDICTIONS", "get_prediction"]


class Prediction:
    """How one kind of model output relates to ``(u_x, u_eps)``; all tensors in basis coordinates."""

    name: str

    def target(self, c: Coefficients, u_x: Tensor, u_eps: Tensor) -> Tensor:
        """The value an exact model outputs for data ``u_x`` and noise ``u_eps``."""
        raise NotImplementedError

    def to_x(self, c: Coefficients, u_t: Tensor, out: Tensor) -> Tensor:
        """``x_hat`` from the model output ``out`` at ``u_t``."""
        raise NotImplementedError

    def to_eps(self, c: Coefficients, u_t: Tensor, out: Tensor) -> Tensor:
        """``eps_hat`` from the model output ``out`` at ``u_t``."""
        raise NotImplementedError

    def log_x_scale(self, c: Coefficients) -> Tensor:
        """``log |d x_hat / d out|``: how an error in this output scales into an error in x."""
        raise NotImplementedError


class EpsPrediction(Prediction):
    name = "eps"

    def target(self, c, u_x, u_eps):
        return u_eps

    def to_x(self, c, u_t, out):  # u_x = (u_t - sigma_t u_eps) / alpha_t
        return (u_t - c.sigma * out) * torch.exp(-c.log_alpha)

    def to_eps(self, c, u_t, out):
        return out

    def log_x_scale(self, c):
        return c.log_sigma - c.log_alpha


class XPrediction(Prediction):
    name = "x"

    def target(self, c, u_x, u_eps):
        return u_x

    def to_x(self, c, u_t, out):
        return out

    def to_eps(self, c, u_t, out):  # u_eps = (u_t - alpha_t u_x) / sigma_t
        return (u_t - c.alpha * out) * torch.exp(-c.log_sigma)

    def log_x_scale(self, c):
        return torch.zeros_like(c.log_alpha)


class VPrediction(Prediction):
    name = "v"

    def target(self, c, u_x, u_eps):
        return (c.alpha * u_eps - c.sigma * u_x) / c.velocity_scale

    def to_x(self, c, u_t, out):
        scale = c.velocity_scale
        return (c.alpha * u_t - c.sigma * scale * out) / scale**2

    def to_eps(self, c, u_t, out):
        scale = c.velocity_scale
        return (c.sigma * u_t + c.alpha * scale * out) / scale**2

    def log_x_scale(self, c):
        return c.log_sigma - torch.log(c.velocity_scale)


class ResidualPrediction(Prediction):
    """``x_hat = z_t + out``: the network predicts what to add to its input (Daras et al. 2022)."""

    name = "residual"

    def target(self, c, u_x, u_eps):  # u_x - u_t
        return (1 - c.alpha) * u_x - c.sigma * u_eps

    def to_x(self, c, u_t, out):
        return u_t + out

    def to_eps(self, c, u_t, out):  # u_eps = (u_t - alpha_t (u_t + out)) / sigma_t
        return (u_t - c.alpha * (u_t + out)) * torch.exp(-c.log_sigma)

    def log_x_scale(self, c):
        return torch.zeros_like(c.log_alpha)


PREDICTIONS: dict[str, Prediction] = {p.name: p for p in (EpsPrediction(), XPrediction(), VPrediction(),
                                                          ResidualPrediction())}
r"""What a model can be trained to output, by the name ``prediction=`` takes: ``"eps"`` the noise
$\varepsilon$, ``"x"`` the clean data $x$, ``"v"`` the velocity
$v = (\alpha_t \varepsilon - \sigma_t x) / \sqrt{\alpha_t^2 + \sigma_t^2}$, ``"residual"`` the
difference $x - z_t$, each per basis coordinate.
Every :class:`Prediction` converts its output to $\hat x$ and $\hat\varepsilon$."""


def get_prediction(name: str) -> Prediction:
    """The :class:`Prediction` called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return PREDICTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown prediction {name!r}; expected one of {sorted(PREDICTIONS)}") from None


#: What the free functions (``lincorrupt.sample``, ``diffusion_loss``, ``elbo``, ``bits_per_dim``) assume a model
#: predicts when neither it nor the call says: v, the kind the Trainer trains by default.
DEFAULT_PREDICTION = "v"


def resolve_prediction(model: object, prediction: str | None) -> str:
    """The prediction kind to use with ``model``: the model's own where it knows it (a
    :class:`~lincorrupt.DiffusionModel` has ``.prediction``), else ``prediction``, else :data:`DEFAULT_PREDICTION`.

    Raises:
        ValueError: ``prediction`` contradicts the model's own kind (every kind gives a valid tensor, so a mismatch
            would otherwise be silent: samples and bounds of the wrong quantity), or is unknown.
    """
    own = getattr(model, "prediction", None)
    if not isinstance(own, str):
        return get_prediction(DEFAULT_PREDICTION if prediction is None else prediction).name
    own = get_prediction(own).name
    if prediction is not None and get_prediction(prediction).name != own:
        raise ValueError(f"the model predicts {own!r} (its .prediction) but prediction={prediction!r} was passed: "
                         f"leave prediction out to use the model's own kind")
    return own
