"""A data order that is a pure function of (seed, step): resuming at step s replays it exactly."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["StepBatchSampler", "derive_seed", "step_draws"]


def derive_seed(*ints: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence), e.g. ``derive_seed(seed, step)``."""
    return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1, np.uint64)[0] >> 1)


def step_draws(seed: int, step: int, batch_size: int, shape: tuple[int, ...], generator: torch.Generator,
               device: torch.device | str = "cpu", label_dropout: float = 0.0) -> tuple[torch.Tensor, ...]:
    """The random draws of the global batch of ``step``, in three kernel launches whatever the batch size:
    ``t`` (B,) ~ U(0, 1), ``flip`` (B,) bool (each image with probability 1/2) and ``noise`` (B, *shape)
    ~ N(0, I), in that order, from ``generator`` reseeded by :func:`derive_seed` ``(seed, step)``; then
    ``drop`` (B,) bool, each label dropped with probability ``label_dropout`` (a fourth launch only when
    it is > 0, so the first three are the same with and without labels). Returns (t, noise, flip, drop).

    Image i's draws are row i whichever process or micro-batch trains it: a rank slices out its
    images, so every world size and every ``grad_accum`` trains on the same draws. Each rank draws
    the whole global batch (B x prod(shape) float32 numbers, 12.6 MB for 1,024 images of 3x32x32).
    ``generator`` lives on ``device`` (its numbers differ between CPU and CUDA generators).
    """
    generator.manual_seed(derive_seed(seed, step))
    t = torch.rand(batch_size, generator=generator, device=device)
    flip = torch.rand(batch_size, generator=generator, device=device) < 0.5
    noise = torch.randn((batch_size, *shape), generator=generator, device=device)
    if label_dropout:
        drop = torch.rand(batch_size, generator=generator, device=device) < label_dropout
    else:
        drop = torch.zeros(batch_size, dtype=torch.bool, device=device)
    return t, noise, flip, drop


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for every step from ``start_step`` on, this rank's share of the global batch.

    Epoch e is the permutation ``randperm(n)`` seeded by ``(seed, e)``; step s takes global batch
    ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch`` (the remainder of an epoch is
    dropped) and rank r keeps its contiguous slice of it. So the order depends on neither the
    number of DataLoader workers nor on where the run was interrupted, and every world size
    sees the same global batches.

    Args:
        n: dataset size.
        batch_size: the global batch size (over all ranks).
        rank, world_size: this process and the number of processes; ``world_size`` must divide ``batch_size``.
        seed: data-order seed.
        start_step: first step to yield.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, start_step: int = 0):
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by the number of processes {world_size}")
        if n < batch_size:
            raise ValueError(f"the dataset has {n} images, fewer than one global batch of {batch_size}")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.start_step = seed, start_step
        self.steps_per_epoch = n // batch_size

    def global_batch(self, step: int) -> torch.Tensor:
        """Indices (batch_size,) of the global batch at ``step``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.seed, epoch)))
        return perm[b * self.batch_size:(b + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        local = self.batch_size // self.world_size
        step, epoch, perm = self.start_step, None, None
        while True:
            e, b = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.seed, e)))
            start = b * self.batch_size + self.rank * local
            yield perm[start:start + local].tolist()
            step += 1

    def __len__(self) -> int:  # infinite in principle; DataLoader only needs a number
        return 2 ** 62
