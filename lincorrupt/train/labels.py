"""Class labels in training: how many of them the Trainer replaces by the null label for classifier-free guidance."""

from __future__ import annotations

from torch.utils.data import Dataset

__all__ = ["resolve_label_dropout"]


def resolve_label_dropout(label_dropout: float, num_classes: int | None, dataset: Dataset) -> float:
    """The share of labels the Trainer replaces by -1: ``label_dropout`` for a conditional model, 0 for an
    unconditional one (it has no labels).

    Raises:
        ValueError: the model is conditional but ``dataset`` does not yield ``(image, label)`` pairs.
    """
    if num_classes is None:
        return 0.0
    if len(dataset) and not isinstance(dataset[0], (tuple, list)):
        raise ValueError(f"the model is class-conditional (num_classes={num_classes}) but the dataset yields "
                         f"{type(dataset[0]).__name__}s, not (image, label) pairs (TensorImages(..., labels=), "
                         f"ImageFolder(..., labels=True), load_images(..., labels=True))")
    return label_dropout
