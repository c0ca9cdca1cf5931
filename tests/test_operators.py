"""Measurement operators against independent references: scipy's Gaussian filter, numpy's pseudo-inverse,
the adjoint identity and the four Moore-Penrose conditions on the dense matrix of every operator."""

import numpy as np
import pytest
import scipy.ndimage
import torch
from hypothesis import given
from hypothesis import strategies as st

import lincorrupt as lc
from lincorrupt import operators as ops

f64 = torch.float64
SHAPE = (3, 6, 8)


def _mask(shape=SHAPE, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.6


OPERATORS = {
    "blur": lambda: ops.Blur(SHAPE, 1.0),
    "downsample": lambda: ops.Downsample(SHAPE, 2),
    "mask": lambda: ops.Mask(_mask()),
    "grey": lambda: ops.Grey(SHAPE),
    "luma": lambda: ops.Grey(SHAPE, weights=ops.LUMA_WEIGHTS),
    "matrix": lambda: ops.Matrix(torch.randn(20, 144, generator=torch.Generator().manual_seed(1), dtype=f64), SHAPE),
}


@pytest.fixture(params=sorted(OPERATORS))
def op(request):
    return OPERATORS[request.param]()


@given(sigma=st.floats(1.5, 4.0), height=st.integers(8, 20), width=st.integers(8, 20))
def test_blur_is_scipy_gaussian_filter(sigma, height, width):
    x = np.random.default_rng(0).standard_normal((2, 2, height, width))
    expected = scipy.ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="reflect", truncate=8)
    got = ops.Blur((2, height, width), sigma)(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_adjoint_identity(op):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, *op.shape, generator=g, dtype=f64)
    y = torch.randn(4, *op.y_shape, generator=g, dtype=f64)
    lhs = (op(x) * y).flatten(1).sum(1)
    rhs = (x * op.adjoint(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def _dense(apply, in_shape):
    d = int(np.prod(in_shape))
    return apply(torch.eye(d, dtype=f64).reshape(d, *in_shape)).reshape(d, -1).T.numpy()


def test_pinv_is_moore_penrose(op):
    """The four Penrose conditions, on the dense matrices of op and op.pinv."""
    a = _dense(op, op.shape)
    p = _dense(op.pinv, op.y_shape)
    tol = 1e-12 * max(1.0, np.abs(p).max())  # float64 round-off grows with the condition number
    np.testing.assert_allclose(a @ p @ a, a, atol=tol)
    np.testing.assert_allclose(p @ a @ p, p, atol=tol * max(1.0, np.abs(p).max()))
    np.testing.assert_allclose(a @ p, (a @ p).T, atol=tol)
    np.testing.assert_allclose(p @ a, (p @ a).T, atol=tol)
    np.testing.assert_allclose(_dense(op.adjoint, op.y_shape), a.T, atol=1e-12)
    np.testing.assert_allclose(op.matrix().numpy(), a, atol=0)


def test_matrix_pinv_is_numpy_pinv():
    h = np.random.default_rng(3).standard_normal((20, 144))
    op = ops.Matrix(torch.from_numpy(h), SHAPE)
    np.testing.assert_allclose(_dense(op.pinv, op.y_shape), np.linalg.pinv(h), atol=1e-10)


def test_closed_forms_by_definition():
    """Each operator is what its name says, written out independently."""
    x = torch.randn(2, *SHAPE, dtype=f64)
    np.testing.assert_allclose(ops.Downsample(SHAPE, 2)(x).numpy(),
                               x.numpy().reshape(2, 3, 3, 2, 4, 2).mean((3, 5)), atol=1e-12)
    np.testing.assert_allclose(ops.Grey(SHAPE)(x).numpy(), x.numpy().mean(1, keepdims=True), atol=1e-12)
    luma = np.einsum("c,bchw->bhw", np.array([0.299, 0.587, 0.114]), x.numpy())[:, None]
    np.testing.assert_allclose(ops.Grey(SHAPE, ops.LUMA_WEIGHTS)(x).numpy(), luma, atol=1e-12)
    m = _mask()
    np.testing.assert_array_equal(ops.Mask(m)(x).numpy(), np.where(m.numpy(), x.numpy(), 0.0))


def test_diagonal_operators_say_so():
    dct, eye = lc.DCTBasis(6, 8), lc.IdentityBasis()
    blur, mask = ops.Blur(SHAPE, 2.0), ops.Mask(_mask())
    assert blur.singular_values_in(eye) is None and blur.singular_values_in(lc.DCTBasis(8, 8)) is None
    h = blur.singular_values_in(dct)
    x = torch.randn(2, *SHAPE, dtype=f64)
    torch.testing.assert_close(blur(x), dct.from_basis(h * dct.to_basis(x)))
    torch.testing.assert_close(mask(x), mask.singular_values_in(eye) * x)
    assert mask.singular_values_in(dct) is None
    for op in (ops.Downsample(SHAPE, 2), ops.Grey(SHAPE), OPERATORS["matrix"]()):
        assert op.singular_values_in(dct) is None and op.singular_values_in(eye) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_kept(op, dtype):
    x = torch.randn(3, *op.shape, dtype=dtype)
    y = op(x)
    assert y.dtype == dtype and y.shape == (3, *op.y_shape)
    assert op.adjoint(y).dtype == dtype and op.pinv(y).shape == x.shape


def test_measure_noise_where_observed():
    mask = _mask()
    op = ops.Mask(mask)
    y = op.measure(torch.zeros(500, *SHAPE, dtype=f64), 0.5, generator=torch.Generator().manual_seed(0))
    assert bool((y[:, ~mask] == 0).all())
    assert abs(y[:, mask].std().item() - 0.5) < 0.01
    assert op.num_measurements == int(mask.sum()) and ops.Grey(SHAPE).num_measurements == 48


def test_bad_input_named(op):
    with pytest.raises(ValueError, match=r"built for images of shape \(3, 6, 8\).*got \(2, 3, 6, 9\)"):
        op(torch.zeros(2, 3, 6, 9))
    with pytest.raises(ValueError, match="takes y of shape"):
        op.pinv(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="floating point"):
        op(torch.zeros(2, *SHAPE, dtype=torch.long))


def test_bad_construction_named():
    with pytest.raises(ValueError, match="divisible"):
        ops.Downsample((1, 6, 8), 4)
    with pytest.raises(ValueError, match="sigma >= 0"):
        ops.Blur(SHAPE, -1.0)
    with pytest.raises(ValueError, match="3 non-negative channel weights"):
        ops.Grey(SHAPE, weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="144 values"):
        ops.Matrix(torch.zeros(3, 10), SHAPE)
    with pytest.raises(ValueError, match="0 / 1"):
        ops.Mask(torch.full(SHAPE, 0.5))
