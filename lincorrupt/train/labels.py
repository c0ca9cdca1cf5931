"""Class labels in training: how many of them the Trainer replaces by the null label for classifier-free guidance."""

from __future__ import annotations

from torch.utils.data import Dataset

__all__ = ["resolve_label_dropout", "dataset_classes"]


def resolve_label_dropout(label_dropout: float, num_classes: int | None, dataset: Dataset) -> float:
    """The share of labels the Trainer replaces by -1: ``label_dropout`` for a conditional model, 0 for an
    unconditional one (it has no labels).

    Raises:
        ValueError: the model is conditional but ``dataset`` does not yield ``(image, label)`` pairs, or
            the dataset has more classes (its ``num_classes``) than the model.
    """
    if num_classes is None:
        return 0.0
    data_classes = dataset_classes(dataset)
    if data_classes is not None and data_classes > num_classes:
        raise ValueError(f"the dataset has {data_classes} classes but the model was built for "
                         f"num_classes={num_classes}: build it with num_classes={data_classes} (or more)")
    if len(dataset) and not isinstance(dataset[0], (tuple, list)):
        raise ValueError(f"the model is class-conditional (num_classes={num_classes}) but the dataset yields "
                         f"{type(dataset[0]).__name__}s, not (image, label) pairs (TensorImages(..., labels=), "
                         f"ImageFolder(..., labels=True), load_images(..., labels=True))")
    return label_dropout


def dataset_classes(dataset: Dataset) -> int | None:
    """The ``num_classes`` a dataset declares (:class:`~lincorrupt.data.TensorImages`,
    :class:`~lincorrupt.data.ImageFolder` with labels), looking through wrappers such as
    ``torch.utils.data.Subset``; None where none is declared."""
    while getattr(dataset, "num_classes", None) is None and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return getattr(dataset, "num_classes", None)
