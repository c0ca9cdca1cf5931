"""From samples to features: the one loop that FID statistics and quality evaluations share."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from lincorrupt.collectives import all_gather_objects

__all__ = ["sample_features"]


def sample_features(sample: Callable[[int, torch.Generator], torch.Tensor], num_samples: int,
                    features: Callable[[torch.Tensor], np.ndarray], batch_size: int = 500, seed: int = 0,
                    rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                    progress: bool = False, desc: str = "samples") -> np.ndarray:
    """Features of ``num_samples`` generated images, drawn in batches and shared over ``world_size`` processes.

    Process ``rank`` draws every ``world_size``-th of the images, in batches of at most
    ``batch_size``, with one generator seeded by ``(seed, rank)`` (so the same seed gives the
    same images at every call), and the features of all processes are gathered.

    Args:
        sample: ``sample(n, generator) -> (n, C, H, W)`` images in [-1, 1], e.g. a closure over
            :func:`lincorrupt.sample` or :meth:`lincorrupt.DiffusionModel.sample`.
        num_samples: total over all processes.
        features: ``features(images) -> (n, D)`` array, images as ``sample`` returns them (float32).
        batch_size, seed, rank, world_size, device: how and where to draw.
        progress: a progress bar titled ``desc``.
    Returns:
        (num_samples, D) features of all processes' samples (on every process), rank-major.
    """
    share = len(range(rank, num_samples, world_size))
    g = torch.Generator(device).manual_seed(seed * 1_000_003 + rank)
    feats, done = [], 0
    with tqdm(total=share, desc=desc, disable=not progress) as bar:
        while done < share:
            n = min(batch_size, share - done)
            feats.append(np.asarray(features(sample(n, g).float())))
            done += n
            bar.update(n)
    return np.concatenate(all_gather_objects(np.concatenate(feats)))
