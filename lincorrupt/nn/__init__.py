"""Networks used by the examples. The core owns no network: any ``model(z_t, t)`` works."""

from lincorrupt.nn.unet import UNet

__all__ = ["UNet"]
