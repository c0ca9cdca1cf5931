"""Blurring in data space with scipy's orthonormal DCT, independent of lincorrupt.basis."""

import scipy.fft


def blur(x, alpha):
    """``C x = V diag(alpha) V^T x`` over the last two axes: ``alpha`` scales each DCT coefficient."""
    return scipy.fft.idctn(alpha * scipy.fft.dctn(x, axes=(-2, -1), norm="ortho"), axes=(-2, -1), norm="ortho")
