"""Pretrained priors that ship with lincorrupt: half-precision EMA weights, loadable with :func:`lincorrupt.load`.

    model = lc.load(lincorrupt.weights.prior("fashion-mnist-blurring"))   # a DiffusionModel, float32

Each is a model of the quality study (``benchmarks/bench_quality.py``: the same 0.69M-parameter UNet,
Adam at lr 1e-3, batch 32, EMA 0.999, 1,500 steps, v-prediction, Fashion-MNIST 28x28 in [-1, 1], training
seed 0), its EMA weights stored in float16 (``python benchmarks/bench_inverse.py --export-priors``); the
corruption carries ``data_var`` fitted on training images, so ``method="pigdm"`` works as loaded. These
are small models trained for minutes on a CPU: good enough to compare priors and restoration methods,
not to produce state-of-the-art images.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRIORS", "prior"]

#: The shipped priors by name: what each one is.
PRIORS = {
    "fashion-mnist-blurring": "BlurringDiffusion (sigma_blur_max 17.5), the study's blur17.5-v",
    "fashion-mnist-ddpm": "the same cosine schedule without blur (sigma_blur_max 0), the study's noblur-v",
}


def prior(name: str) -> Path:
    """The file of the shipped prior ``name`` (a key of :data:`PRIORS`), for :func:`lincorrupt.load`."""
    if name not in PRIORS:
        raise ValueError(f"no shipped prior {name!r}; expected one of {sorted(PRIORS)}")
    path = Path(__file__).with_name(f"{name}.pt")
    if not path.is_file():
        raise FileNotFoundError(f"the shipped prior {name!r} is missing: {path} (reinstall lincorrupt)")
    return path
