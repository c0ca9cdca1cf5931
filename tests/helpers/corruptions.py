"""The registry of corruptions every generic property test loops over: a new corruption gets all
of them by adding one line here."""

import lincorrupt as lc

# Small shapes with H != W so that transposed height and width cannot pass unnoticed.
SHAPE = (2, 4, 6)
CORRUPTIONS = {
    "ddpm-linear": lambda: lc.DDPM(SHAPE, schedule="linear"),
    "ddpm-cosine": lambda: lc.DDPM(SHAPE, schedule="cosine"),
    "ihdm": lambda: lc.IHDM(SHAPE),
    "blurring": lambda: lc.BlurringDiffusion(SHAPE),
    "blurring-weak": lambda: lc.BlurringDiffusion(SHAPE, sigma_blur_max=2.0, min_scale=0.1),
    "soft": lambda: lc.SoftDiffusion(SHAPE, sigma_blur_max=1.0),  # mild: eps -> x divides by alpha_t
}
