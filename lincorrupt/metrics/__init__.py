"""Evaluation: FID with pytorch-fid's Inception (weights from a local file, never downloaded); Fréchet distance,
KID and precision/recall of any feature matrices; per-frequency-band diagnostics in the DCT basis (power spectra of
samples, a network's denoising error relative to the Wiener estimator of the data's Gaussian fit)."""

from lincorrupt.metrics.feature_nets import FEATURE_NETS, extract_features, label_accuracy, load_feature_net
from lincorrupt.metrics.frechet import (
                                    ENV_VAR,
                                    WEIGHTS_FILE,
                                    FIDStats,
                                    activations,
                                    dataset_stats,
                                    fid,
                                    inception_weights_path,
                                    load_inception,
                                    sample_stats,
)
from lincorrupt.metrics.quality import frechet_distance, kid, precision_recall
from lincorrupt.metrics.samples import sample_features
from lincorrupt.metrics.spectral import (
                                    GaussianFit,
                                    band_error_ratio,
                                    denoising_band_errors,
                                    power_spectrum,
                                    radial_bands,
                                    spectrum_ratio,
                                    wiener_x_hat,
)

__all__ = ["ENV_VAR", "WEIGHTS_FILE", "FIDStats", "activations", "dataset_stats", "fid", "inception_weights_path",
           "load_inception", "sample_stats", "frechet_distance", "kid", "precision_recall",
           "FEATURE_NETS", "load_feature_net", "extract_features", "label_accuracy", "sample_features",
           "radial_bands", "power_spectrum", "spectrum_ratio", "GaussianFit", "wiener_x_hat", "band_error_ratio",
           "denoising_band_errors"]
