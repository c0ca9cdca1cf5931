"""Exponential moving averages of the weights: Polyak averaging (decay 0.9999 in DDPM) with an optional warm-up,
and post-hoc EMA.

Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion models", EDM2,
sec. 3): train with two power-function EMA profiles, keep periodic snapshots of both, and
reconstruct the EMA of any length after training.

The power-function EMA with exponent gamma averages the weights ``theta_1 .. theta_t`` (``theta_k``: after
optimiser step k) with the profile ``p_t(s) = (gamma + 1) s^gamma / t^(gamma + 1)`` on ``0 < s <= t``. Its
update number t (1-based) is ``theta_hat_t = beta_t theta_hat_(t-1) + (1 - beta_t) theta_t`` with
``beta_t = (1 - 1 / t)^(gamma + 1)`` (EDM2 sec. 3.1), which gives ``theta_k`` exactly the weight
``(k^(gamma + 1) - (k - 1)^(gamma + 1)) / t^(gamma + 1)``, the integral of ``p_t`` over ``(k - 1, k]``: the
EMA of the weights held piecewise constant over each step. Its length is the relative standard deviation of the
profile, ``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` (EDM2 sec. 3.1; the paper trains with 0.05
and 0.10).

A snapshot at step t_i of the profile gamma_j is a known profile; the EMA of another length at step T is the
combination ``sum_i x_i theta_hat_i`` whose profile is the least-squares fit of the target profile in
L2(0, inf): ``A x = b`` with ``A`` the inner products of the snapshots' profiles and ``b`` theirs with the target
(closed form, :func:`profile_inner_product`; EDM2's ``solve_posthoc_coefficients``). The residual of that fit,
``||sum_i x_i p_i - p_target||``, bounds the reconstruction's error: ``|error| <= residual * ||theta||`` by
Cauchy-Schwarz, with ``||theta||^2`` the integral of the weights squared over the steps.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lincorrupt.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["EMA", "warmup_decay", "PowerEMA", "posthoc_ema", "posthoc_coefficients", "sigma_rel_to_gamma",
           "gamma_to_sigma_rel", "profile_inner_product", "SNAPSHOT_FOLDER", "MAX_SIGMA_REL"]


def warmup_decay(step: int, decay: float, power: float) -> float:
    """The decay of update ``step`` (0-based) under a warm-up: ``min(decay, 1 - (1 + step)^-power)``.

    The warm-up of k-diffusion's ``EMAWarmup`` with ``inv_gamma = 1`` (after Karras et al. 2022,
    whose EMA length grows with training): early averages forget the initial weights quickly
    (update 0 copies the model; at power 2/3 the decay is 0.99 after 1,000 updates, 0.999 after
    31,000), so short runs sample from trained weights. ``power = 0`` turns the warm-up off (the
    constant ``decay``). k-diffusion suggests 2/3 for runs of up to ~100k steps, 3/4 for longer ones.
    """
    if power == 0:
        return decay
    return min(decay, 1.0 - (1.0 + step) ** -power)


class EMA(nn.Module):
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every optimiser step.

    Holds a frozen copy of the model (``ema.module``) in float32; buffers are copied as they are.

    Args:
        model: the network being trained (unwrapped, not the DDP wrapper).
        decay: EMA decay in [0, 1): the decay of every update, or its ceiling under a warm-up.
        warmup_power: the warm-up's power (:func:`warmup_decay`); 0: no warm-up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_power: float = 0.0):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if not 0.0 <= warmup_power <= 1.0:
            raise ValueError(f"EMA warm-up power must be in [0, 1], got {warmup_power}")
        self.decay, self.warmup_power = decay, warmup_power
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """EMA update number ``step`` (0-based) towards ``model``'s current weights, at the decay
        :func:`warmup_decay` gives (fused foreach lerp: one kernel per dtype)."""
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - warmup_decay(step, self.decay, self.warmup_power))
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


#: The folder of a run that holds the snapshots (``<out_dir>/posthoc/0001000.pt``, ...).
SNAPSHOT_FOLDER = "posthoc"

#: The longest EMA a power function with gamma >= 0 has: the plain average (gamma = 0), sigma_rel = 12^-1/2.
MAX_SIGMA_REL = 12**-0.5


def gamma_to_sigma_rel(gamma: float) -> float:
    """``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` (EDM2 sec. 3.1)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma >= 0 of the profile of length ``sigma_rel`` in (0, 12^-1/2]: the largest real root of
    ``gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0`` (EDM2 sec. 3.1, solved for gamma)."""
    if not (isinstance(sigma_rel, (int, float)) and 0 < sigma_rel <= MAX_SIGMA_REL + 1e-12):
        raise ValueError(f"sigma_rel must be a number in (0, {MAX_SIGMA_REL:.4f}] (12^-1/2: the plain average of "
                         f"all steps), got {sigma_rel!r}")
    inv = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return max(0.0, float(roots[np.abs(roots.imag) < 1e-9].real.max()))


def profile_inner_product(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """``integral_0^inf p_a(s) p_b(s) ds`` of two power-function profiles (arrays broadcast), in float64:
    ``(gamma_a + 1) (gamma_b + 1) / (gamma_a + gamma_b + 1) * (t_min / t_max)^gamma_max_side / t_max``, where the
    exponent is that of the longer profile (as the EDM2 code's ``power_function_correlation``)."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    exponent = np.where(t_a < t_b, gamma_b, gamma_a)
    ratio = np.minimum(t_a, t_b) / np.maximum(t_a, t_b)
    return (gamma_a + 1) * (gamma_b + 1) * ratio**exponent / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def posthoc_coefficients(steps, gammas, target_step: float, target_gamma: float) -> tuple[np.ndarray, float]:
    """The least-squares combination of snapshot profiles (steps, gammas: (N,)) that best matches the target's.

    Returns:
        ``(x, residual)``: (N,) coefficients with ``theta_hat_target ~ sum_i x_i theta_hat_i``, and the L2 norm of
        ``sum_i x_i p_i - p_target`` (the error bound of the module docstring).
    """
    steps, gammas = np.asarray(steps, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    a = profile_inner_product(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    b = profile_inner_product(steps, gammas, target_step, target_gamma)
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    target_norm = profile_inner_product(target_step, target_gamma, target_step, target_gamma)
    return x, math.sqrt(max(0.0, float(target_norm - 2 * x @ b + x @ a @ x)))


class PowerEMA(nn.Module):
    """The power-function EMAs of ``model`` for several lengths ``sigma_rels`` (EDM2 sec. 3.1), in the model's dtype.

    Args:
        model: the network being trained (unwrapped).
        sigma_rels: the profiles' lengths, each in (0, 12^-1/2] (EDM2: 0.05 and 0.10).
    """

    def __init__(self, model: nn.Module, sigma_rels: tuple[float, ...]):
        super().__init__()
        if len(sigma_rels) < 1:
            raise ValueError("PowerEMA needs at least one sigma_rel")
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.averages = nn.ModuleList(copy.deepcopy(model).eval().requires_grad_(False) for _ in self.sigma_rels)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Update number ``step + 1`` (``step`` 0-based, as the Trainer counts) towards ``model``'s weights:
        ``lerp`` by ``1 - beta`` with ``beta = (1 - 1 / (step + 1))^(gamma + 1)`` (the first copies the model)."""
        src = [p.detach() for p in model.parameters()]
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1 - 1 / (step + 1)) ** (gamma + 1)
            torch._foreach_lerp_(list(average.parameters()), src, 1.0 - beta)
            for b_avg, b in zip(average.buffers(), model.buffers()):
                b_avg.copy_(b)

    def snapshot(self, folder: str | Path, step: int) -> Path:
        """Write the profiles after ``step`` optimiser steps to ``folder/posthoc/<step>.pt`` (atomic)."""
        state = {"step": int(step), "sigma_rels": list(self.sigma_rels),
                 "averages": [average.state_dict() for average in self.averages]}
        return save_checkpoint(state, Path(folder) / SNAPSHOT_FOLDER / f"{int(step):07d}.pt")


def posthoc_ema(run: str | Path, sigma_rel: float, step: int | None = None) -> dict[str, torch.Tensor]:
    """The EMA of length ``sigma_rel`` at ``step``, reconstructed from the snapshots of a run (module docstring).

    Args:
        run: the run folder (the Trainer's ``out_dir``, trained with ``posthoc_ema`` and ``snapshot_every``).
        sigma_rel: the length of the EMA to reconstruct, in (0, 12^-1/2].
        step: the step it ends at (default: the last snapshot's); only snapshots up to it are used.
    Returns:
        The network's state dict: floating tensors the least-squares combination of the snapshots'
        (accumulated in float64, stored in their dtype), other buffers the last snapshot's. Load it with
        ``network.load_state_dict(...)``.
    Raises:
        FileNotFoundError: the run has no snapshots (up to ``step``).
    """
    folder = Path(run) / SNAPSHOT_FOLDER
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    snapshots = [(int(f.stem), f) for f in files if f.stem.isdigit()]
    if step is not None:
        snapshots = [(s, f) for s, f in snapshots if s <= step]
    if not snapshots:
        raise FileNotFoundError(f"{folder} holds no post-hoc EMA snapshots{f' up to step {step}' if step else ''}: "
                                f"train with TrainConfig(posthoc_ema=(0.05, 0.1), snapshot_every=...)")
    target_gamma = sigma_rel_to_gamma(sigma_rel)
    target_step = snapshots[-1][0] if step is None else step
    sigma_rels = load_checkpoint(snapshots[0][1])["sigma_rels"]
    steps = [s for s, _ in snapshots for _ in sigma_rels]
    gammas = [sigma_rel_to_gamma(r) for _ in snapshots for r in sigma_rels]
    x, _ = posthoc_coefficients(steps, gammas, target_step, target_gamma)
    total: dict[str, torch.Tensor] = {}
    coefficients = iter(x.tolist())
    for _, path in snapshots:
        snapshot = load_checkpoint(path)
        if snapshot["sigma_rels"] != sigma_rels:
            raise ValueError(f"{path} holds the profiles {snapshot['sigma_rels']}, {snapshots[0][1]} holds "
                             f"{sigma_rels}: the snapshots of one run share their profiles")
        for average in snapshot["averages"]:
            weight = next(coefficients)
            for name, value in average.items():
                if value.is_floating_point():
                    total[name] = total.get(name, 0) + weight * value.double()
                else:
                    total[name] = value
    return {name: value.to(average[name].dtype) for name, value in total.items()}
