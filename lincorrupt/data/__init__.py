"""Image datasets for training: torchvision's CIFAR-10 / Fashion-MNIST or a folder of class subfolders."""

from lincorrupt.data.fashion_mnist import DEBIAN_DIR, load_fashion_mnist, read_idx
from lincorrupt.data.images import (
    ImageFolder,
    TensorImages,
    UnreadableImageError,
    load_images,
    to_model_range,
    to_unit_range,
)

__all__ = ["DEBIAN_DIR", "load_fashion_mnist", "read_idx", "ImageFolder", "TensorImages", "UnreadableImageError",
           "load_images", "to_model_range", "to_unit_range"]
