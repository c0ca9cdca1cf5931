"""The registry of corruptions every generic property test loops over: a new corruption gets all
of them by adding one line here."""

import torch

import lincorrupt as lc

# Small shapes with H != W so that transposed height and width cannot pass unnoticed.
SHAPE = (2, 4, 6)


def random_frequency_basis(seed: int = 0) -> lc.MatrixBasis:
    """A basis that is not the DCT: a random orthogonal (48, 48) Q over the whole (C, H, W) event, mixing channels
    and pixels, with random per-coordinate frequencies in [0, 12) (the DCT's range at 4x6), one of them 0."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(48, 48, generator=g, dtype=torch.float64))
    lam = 12 * torch.rand(SHAPE, generator=g, dtype=torch.float64)
    lam.view(-1)[0] = 0.0
    return lc.MatrixBasis(q * torch.sign(torch.diagonal(r)), event_shape=SHAPE, frequencies_squared=lam)


CORRUPTIONS = {
    "ddpm-linear": lambda: lc.DDPM(SHAPE, schedule="linear"),
    "ddpm-cosine": lambda: lc.DDPM(SHAPE, schedule="cosine"),
    "ihdm": lambda: lc.IHDM(SHAPE),
    "blurring": lambda: lc.BlurringDiffusion(SHAPE),
    "blurring-weak": lambda: lc.BlurringDiffusion(SHAPE, sigma_blur_max=2.0, min_scale=0.1),
    "soft": lambda: lc.SoftDiffusion(SHAPE, sigma_blur_max=1.0),  # mild: eps -> x divides by alpha_t
    # per-coordinate alpha_t in a random orthogonal basis: nothing may assume the DCT or V = I
    "blurring-matrix": lambda: lc.BlurringDiffusion(SHAPE, sigma_blur_max=2.0, min_scale=0.1,
                                                    basis=random_frequency_basis()),
}
