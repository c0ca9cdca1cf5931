"""The corruptions lincorrupt ships; each is one short subclass of DiagonalizableCorruption."""

from .blurring import BlurringDiffusion
from .ddpm import DDPM
from .ihdm import IHDM
from .soft import SoftDiffusion

__all__ = ["DDPM", "IHDM", "BlurringDiffusion", "SoftDiffusion"]
