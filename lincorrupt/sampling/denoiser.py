"""The model as the samplers see it: ``(u_t, t, c) -> u_x_hat`` (and ``u_eps_hat``) in basis coordinates."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..coefficients import Coefficients
from ..corruption import DiagonalizableCorruption
from ..losses import check_model_output
from ..predictions import get_prediction

__all__ = ["Denoiser"]


class Denoiser:
    """Wraps ``model(z_t, t)`` into ``(u_t, t, c) -> u_x_hat`` (and ``u_eps_hat``) in basis coordinates.

    :meth:`x_hat` gives the data prediction alone, which is all that most samplers use; calling
    the denoiser gives ``(u_x_hat, u_eps_hat)`` for samplers that need the noise prediction too
    (DDIM). Neither converts to a form it does not return.

    Args:
        model: ``model(z_t, t) -> Tensor`` of z_t's shape.
        corruption: gives the basis.
        prediction: what the model outputs: "eps", "x" or "v".
    """

    def __init__(self, model: Callable[[Tensor, Tensor], Tensor], corruption: DiagonalizableCorruption,
                 prediction: str = "eps"):
        self.model, self.corruption, self.prediction = model, corruption, get_prediction(prediction)

    def output(self, u_t: Tensor, t: Tensor) -> Tensor:
        """The model's output at ``u_t`` (B, *shape) and time ``t`` (1,), in basis coordinates."""
        basis = self.corruption.basis
        z_t = basis.from_basis(u_t)
        return basis.to_basis(check_model_output(self.model(z_t, t.expand(u_t.shape[0]).to(u_t.dtype)), z_t))

    def x_hat(self, u_t: Tensor, t: Tensor, c: Coefficients) -> Tensor:
        """``u_x_hat`` at ``u_t`` (B, *shape), time ``t`` (1,) with coefficients ``c``."""
        return self.prediction.to_x(c, u_t, self.output(u_t, t))

    def __call__(self, u_t: Tensor, t: Tensor, c: Coefficients) -> tuple[Tensor, Tensor]:
        """``(u_x_hat, u_eps_hat)`` at ``u_t`` (B, *shape), time ``t`` (1,) with coefficients ``c``."""
        out = self.output(u_t, t)
        return self.prediction.to_x(c, u_t, out), self.prediction.to_eps(c, u_t, out)
