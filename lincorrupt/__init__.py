"""lincorrupt: diffusion models whose corruption is diagonal in an orthogonal basis.

    q(z_t | x) = N(V diag(alpha_t) V^T x, V diag(sigma_t^2) V^T)

DDPM, inverse heat dissipation, blurring diffusion and Soft Diffusion are instances of
:class:`DiagonalizableCorruption`; one posterior, loss and set of samplers serve them all.
"""

from . import operators  # noqa: F401  (lc.operators: the measurement operators of lc.restore)
from .basis import Basis, DCTBasis, IdentityBasis, MatrixBasis
from .coefficients import Coefficients, Transition
from .corruption import DiagonalizableCorruption, FastSampling, Gaussian, InvalidCorruptionError
from .corruptions import DDPM, IHDM, BlurringDiffusion, SoftDiffusion
from .grid_fit import fit_grid
from .likelihood import ELBO, bits_per_dim, elbo
from .losses import diffusion_loss
from .model import DiffusionModel, load
from .oracle import GaussianData
from .predictions import PREDICTIONS
from .priors import EmpiricalPrior, GaussianPrior, Prior, StandardNormalPrior
from .restoration import restore
from .sampling import GRIDS, SAMPLERS, CUDAGraphModel, Denoiser, Step, StepHook, StepInfo, sample
from .validation import set_validate_args, validate_args
from .weightings import elbo_weighting, snr_weighting, soft_score_weighting

__version__ = "0.1.0"

__all__ = [
    "Basis", "IdentityBasis", "DCTBasis", "MatrixBasis",
    "DiagonalizableCorruption", "Coefficients", "Transition", "Gaussian", "InvalidCorruptionError",
    "FastSampling", "DDPM", "IHDM", "BlurringDiffusion", "SoftDiffusion",
    "diffusion_loss", "elbo_weighting", "soft_score_weighting", "snr_weighting", "PREDICTIONS",
    "Prior", "StandardNormalPrior", "GaussianPrior", "EmpiricalPrior",
    "sample", "Denoiser", "StepInfo", "Step", "StepHook", "SAMPLERS", "GRIDS", "CUDAGraphModel",
    "elbo", "bits_per_dim", "ELBO",
    "set_validate_args", "validate_args",
    "DiffusionModel", "load", "GaussianData", "fit_grid",
    "restore",
]
