"""Fréchet Inception Distance (Heusel et al. 2017) with pytorch-fid's InceptionV3.

pytorch-fid fetches its weights (``pt_inception-2015-12-05-6726825d.pth``) from GitHub on first
use; offline that cannot work, so the weights come from a local file: the ``weights`` argument,
else ``$LINCORRUPT_INCEPTION_WEIGHTS``, else torch hub's cache (where pytorch-fid would have put
them). :func:`inception_weights_path` fails fast, before any sampling, when none exists.

Images enter Inception as float (B, 3, H, W) in [0, 1], quantised to 8 bits like saved PNGs;
greyscale is repeated to three channels. Samples are generated and embedded batch by batch
(no image folder on disk); with several processes each draws its share.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from lincorrupt.data.images import to_unit_range
from lincorrupt.metrics.samples import sample_features

__all__ = ["ENV_VAR", "WEIGHTS_FILE", "FIDStats", "activations", "dataset_stats", "fid", "inception_weights_path",
           "load_inception", "sample_stats"]

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
ENV_VAR = "LINCORRUPT_INCEPTION_WEIGHTS"


def _hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def inception_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """The local Inception weights file: ``weights``, else ``$LINCORRUPT_INCEPTION_WEIGHTS``, else torch hub's cache.

    Raises:
        FileNotFoundError: naming the expected file, where it comes from and where to put it.
    """
    for source, value in (("the weights argument", weights), (f"${ENV_VAR}", os.environ.get(ENV_VAR))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"Inception weights file {path} (from {source}) does not exist; "
                                        f"expected pytorch-fid's {WEIGHTS_FILE}")
            return path
    if _hub_path().is_file():
        return _hub_path()
    from pytorch_fid.inception import FID_WEIGHTS_URL
    raise FileNotFoundError(
        f"FID needs pytorch-fid's Inception weights {WEIGHTS_FILE}, which cannot be downloaded without network. "
        f"Fetch it on a connected machine from {FID_WEIGHTS_URL} and pass --inception-weights PATH, "
        f"set {ENV_VAR}=PATH, or put it at {_hub_path()}")


def load_inception(weights: str | os.PathLike | None = None, dims: int = 2048,
                   device: str | torch.device = "cpu") -> torch.nn.Module:
    """pytorch-fid's ``InceptionV3`` (the TF FID network) returning the ``dims``-feature block,
    weights from a local file."""
    from pytorch_fid import inception as pf
    if dims not in pf.InceptionV3.BLOCK_INDEX_BY_DIM:
        raise ValueError(f"dims={dims}: expected one of {sorted(pf.InceptionV3.BLOCK_INDEX_BY_DIM)}")
    path = inception_weights_path(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read Inception weights {path} ({type(e).__name__}); "
                         f"expected pytorch-fid's {WEIGHTS_FILE}") from None
    try:
        with _offline_weights(pf, state):
            model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not pytorch-fid's Inception state dict {WEIGHTS_FILE}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    return model.eval().to(device)


@contextlib.contextmanager
def _offline_weights(inception_module, state: dict):
    """While building pytorch-fid's network, its one weight download (``load_state_dict_from_url``
    in ``pytorch_fid.inception``) returns the ``state`` read from the local file instead."""
    download = inception_module.load_state_dict_from_url
    inception_module.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        yield
    finally:
        inception_module.load_state_dict_from_url = download


@torch.no_grad()
def activations(images: torch.Tensor, inception: torch.nn.Module) -> np.ndarray:
    """Inception features of a batch.

    Args:
        images: (B, C, H, W) float in [0, 1] with C in {1, 3}.

    Returns:
        (B, dims) float64 array.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"FID images must be (B, 1 or 3, H, W), got {tuple(images.shape)}")
    device = next(inception.parameters()).device
    x = (images.float().clamp(0, 1) * 255).round().div(255).to(device)  # 8-bit, as saved PNGs
    x = x.expand(-1, 3, -1, -1)
    feats = inception(x)[0]
    if feats.shape[2:] != (1, 1):  # lower blocks: global average pool, as pytorch-fid does
        feats = torch.nn.functional.adaptive_avg_pool2d(feats, (1, 1))
    return feats.flatten(1).double().cpu().numpy()


@dataclass
class FIDStats:
    """Mean (D,) and covariance (D, D) of Inception features of ``n`` images."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def of(cls, feats: np.ndarray) -> FIDStats:
        if len(feats) < 2:
            raise ValueError(f"FID needs at least 2 images, got {len(feats)}")
        return cls(feats.mean(0), np.cov(feats, rowvar=False), len(feats))

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics to ``path`` (.npz) atomically: a temporary file, then a rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, mu=self.mu, sigma=self.sigma, n=self.n)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FIDStats:
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mu"], f["sigma"], int(f["n"]))


def fid(a: FIDStats, b: FIDStats) -> float:
    """Fréchet distance ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` in float64.

    Heusel et al. 2017, eq. 6. The trace of the root is the sum of the square roots of the
    eigenvalues of the symmetric ``S_a^(1/2) S_b S_a^(1/2)`` (similar to ``S_a S_b``), both from
    ``numpy.linalg.eigh``, negative rounding errors clipped to 0: no complex intermediate and no
    dependence on ``scipy.linalg.sqrtm``'s changing signature.
    """
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"FID statistics of different feature sizes: {a.mu.shape} vs {b.mu.shape}")
    diff = np.asarray(a.mu, np.float64) - np.asarray(b.mu, np.float64)
    s_a, s_b = np.atleast_2d(np.asarray(a.sigma, np.float64)), np.atleast_2d(np.asarray(b.sigma, np.float64))
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root_a @ s_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * trace_root)


def dataset_stats(dataset: Dataset, inception: torch.nn.Module, batch_size: int = 200,
                  cache: str | os.PathLike | None = None, num_workers: int = 0, progress: bool = True) -> FIDStats:
    """Reference statistics of a Dataset of uint8 (C, H, W) images (or ``(image, label)`` pairs, whose labels
    are not used), cached in ``cache`` (.npz) when given."""
    if cache is not None and Path(cache).is_file():
        stats = FIDStats.load(cache)
        if stats.n == len(dataset):
            return stats
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    batches = (x[0] if isinstance(x, (tuple, list)) else x for x in loader)
    feats = [activations(x.float() / 255, inception)
             for x in tqdm(batches, "FID reference", len(loader), disable=not progress)]
    stats = FIDStats.of(np.concatenate(feats))
    if cache is not None:
        stats.save(cache)
    return stats


def sample_stats(sample: Callable[[int, torch.Generator], torch.Tensor], num_samples: int, inception: torch.nn.Module,
                 batch_size: int = 500, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu", progress: bool = True) -> FIDStats:
    """Statistics of ``num_samples`` generated images, drawn in batches and shared over ``world_size`` processes.

    Args:
        sample: ``sample(n, generator) -> (n, C, H, W)`` images in [-1, 1], e.g. a closure over
            ``lincorrupt.sample`` with the EMA model.
        num_samples: total over all processes (50,000 for the paper protocol).

    Returns:
        The statistics of all samples (on every rank).
    """
    feats = sample_features(sample, num_samples, lambda x: activations(to_unit_range(x), inception), batch_size,
                            seed, rank, world_size, device, progress, desc="FID samples")
    return FIDStats.of(feats)
