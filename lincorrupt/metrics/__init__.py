"""Evaluation: FID with pytorch-fid's Inception (weights from a local file, never downloaded)."""

from lincorrupt.metrics.frechet import (ENV_VAR, WEIGHTS_FILE, FIDStats, activations, dataset_stats, fid,
                                    inception_weights_path, load_inception, sample_stats)

__all__ = ["ENV_VAR", "WEIGHTS_FILE", "FIDStats", "activations", "dataset_stats", "fid", "inception_weights_path",
           "load_inception", "sample_stats"]
