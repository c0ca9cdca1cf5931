"""Bases: orthonormality, exact round trips, and the DCT against scipy's orthonormal DCT-II."""

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import given
from hypothesis import strategies as st

import lincorrupt as lc
from lincorrupt import basis as basis_module


def dense_matrix(basis, event_shape):
    """V as a dense (n, n) matrix, column j = from_basis(e_j), in float64."""
    n = int(np.prod(event_shape))
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *event_shape)
    return basis.from_basis(eye).reshape(n, n).T


def random_orthogonal(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


sizes = st.integers(1, 12)


@given(h=sizes, w=sizes)
def test_dct_basis_is_orthonormal(h, w):
    v = dense_matrix(lc.DCTBasis(h, w), (h, w))
    torch.testing.assert_close(v.T @ v, torch.eye(h * w, dtype=torch.float64), atol=1e-12, rtol=0)


@given(h=sizes, w=sizes, batch=st.lists(st.integers(1, 3), max_size=3), seed=st.integers(0, 2**16))
def test_dct_equals_scipy_orthonormal_dct2(h, w, batch, seed):
    x = torch.randn(*batch, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = scipy.fft.dctn(x.numpy(), type=2, axes=(-2, -1), norm="ortho")
    basis = lc.DCTBasis(h, w)
    np.testing.assert_allclose(basis.to_basis(x).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(basis.from_basis(torch.from_numpy(expected)).numpy(), x.numpy(), atol=1e-12)


@pytest.mark.parametrize("fft_min, kron_max", [(1, 0), (10**9, 0), (10**9, 10**9)],
                         ids=["pocketfft", "matmul", "kronecker"])
def test_every_dct_path_agrees_with_scipy_and_carries_gradients(monkeypatch, fft_min, kron_max):
    monkeypatch.setattr(basis_module, "CPU_FFT_MIN_PIXELS", fft_min)
    monkeypatch.setattr(basis_module, "KRON_MAX_PIXELS", kron_max)
    basis = lc.DCTBasis(5, 7)
    x = torch.randn(3, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    u = basis.to_basis(x)
    np.testing.assert_allclose(u.detach().numpy(), scipy.fft.dctn(x.detach().numpy(), axes=(-2, -1), norm="ortho"),
                               atol=1e-12)
    # d<g, V^T x>/dx = V g: the adjoint of an orthogonal map is its inverse.
    g = torch.randn_like(u)
    (grad,) = torch.autograd.grad((u * g).sum(), x)
    expected = scipy.fft.idctn(g.numpy(), axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", [lambda: lc.IdentityBasis(), lambda: lc.DCTBasis(8, 6),
                                  lambda: lc.DCTBasis(16, 12), lambda: lc.DCTBasis(80, 64),
                                  lambda: lc.MatrixBasis(random_orthogonal(48, 0), event_shape=(8, 6))],
                         ids=["identity", "dct-kron", "dct", "dct-large", "matrix"])
def test_round_trip_preserves_shape_dtype_and_values(make, dtype):
    basis = make()
    shape = (2, 3, basis.height, basis.width) if isinstance(basis, lc.DCTBasis) else (2, 3, 8, 6)
    x = torch.randn(shape).to(dtype)
    u = basis.to_basis(x)
    back = basis.from_basis(u)
    assert u.shape == x.shape and u.dtype == dtype and back.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(back.float(), x.float(), atol=tol * 4, rtol=tol)
    # an orthogonal map preserves norms
    torch.testing.assert_close(u.double().norm(), x.double().norm(), atol=0, rtol=tol * 4)


@given(n=st.integers(1, 10), seed=st.integers(0, 1000))
def test_matrix_basis_is_the_given_matrix(n, seed):
    q = random_orthogonal(n, seed)
    basis = lc.MatrixBasis(q)
    torch.testing.assert_close(dense_matrix(basis, (n,)), q)
    x = torch.randn(4, n, dtype=torch.float64)
    torch.testing.assert_close(basis.to_basis(x), x @ q)  # rows: (Q^T x)^T


def test_identity_basis_is_identity():
    x = torch.randn(2, 3, 4)
    assert torch.equal(lc.IdentityBasis().to_basis(x), x)


def test_frequencies_are_the_heat_equation_eigenvalues():
    # The continuous Laplacian's Neumann eigenfunctions cos(pi k (y + 1/2) / H) sampled at the
    # pixel centres are the DCT-II basis vectors, with eigenvalue (pi k / H)^2 + (pi j / W)^2.
    h, w = 5, 7
    basis = lc.DCTBasis(h, w)
    lam = basis.frequencies_squared
    k, j = 3, 2
    y = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    x = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    mode = torch.cos(np.pi * k * y / h) * torch.cos(np.pi * j * x / w)
    u = basis.to_basis(mode)
    assert u.abs().argmax() == k * w + j  # a single DCT coordinate
    assert lam[k, j].item() == pytest.approx((np.pi * k / h) ** 2 + (np.pi * j / w) ** 2)


def test_bad_bases_are_refused():
    with pytest.raises(ValueError, match="orthogonal"):
        lc.MatrixBasis(torch.ones(3, 3))
    with pytest.raises(ValueError, match="square"):
        lc.MatrixBasis(torch.ones(3, 2))
    with pytest.raises(ValueError, match="event_shape"):
        lc.MatrixBasis(torch.eye(6), event_shape=(2, 2))
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 4, 6\)"):
        lc.DCTBasis(4, 6).to_basis(torch.zeros(2, 6, 4))
    with pytest.raises(TypeError, match="floating-point"):
        lc.DCTBasis(4, 6).to_basis(torch.zeros(2, 4, 6, dtype=torch.int64))


@given(c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6))
def test_dense_matrix_of_the_dct_is_scipys(c, h, w):
    """``matrix(shape)`` is V with ``u = V^T x`` on flattened events: column j is scipy's inverse DCT of e_j."""
    d = c * h * w
    eye = np.eye(d).reshape(d, c, h, w)
    expected = scipy.fft.idctn(eye, axes=(-2, -1), norm="ortho").reshape(d, d).T
    np.testing.assert_allclose(lc.DCTBasis(h, w).matrix((c, h, w)).numpy(), expected, atol=1e-12)
    assert lc.DCTBasis(h, w).matrix((c, h, w), torch.float32).dtype == torch.float32


@given(n=st.integers(1, 8), blocks=st.integers(1, 3), seed=st.integers(0, 1000))
def test_dense_matrix_of_a_matrix_basis_is_q_per_block(n, blocks, seed):
    q = random_orthogonal(n, seed)
    basis = lc.MatrixBasis(q)
    expected = torch.block_diag(*[q] * blocks)  # events (blocks, n): Q acts on each row
    torch.testing.assert_close(basis.matrix((blocks, n)), expected, rtol=0, atol=0)
    torch.testing.assert_close(dense_matrix(basis, (blocks, n)), expected)  # the generic path agrees
    basis.matrix((n,))[0, 0] = 7.0  # a copy: the basis is unchanged
    torch.testing.assert_close(basis.q, q, rtol=0, atol=0)


def test_identity_dense_matrix_and_refused_shapes():
    torch.testing.assert_close(lc.IdentityBasis().matrix((2, 3)), torch.eye(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot act on events"):
        lc.DCTBasis(4, 6).matrix((6, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_basis_follows_q_changed_in_place(dtype):
    """A MatrixBasis uses its current ``q``: no cast cached before the change goes stale, whether ``q`` is
    written in place or loaded from a state dict."""
    q1, q2 = random_orthogonal(6, 1), random_orthogonal(6, 2)
    basis = lc.MatrixBasis(q1)
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(basis.to_basis(x.to(dtype)), (x @ q1).to(dtype))  # caches the cast
    with torch.no_grad():
        basis.q.copy_(q2)
    torch.testing.assert_close(basis.to_basis(x.to(dtype)), (x @ q2).to(dtype))
    torch.testing.assert_close(basis.from_basis(x.to(dtype)), (x @ q2.T).to(dtype))
    basis.load_state_dict({"q": q1})
    torch.testing.assert_close(basis.to_basis(x.to(dtype)), (x @ q1).to(dtype))
    torch.testing.assert_close(basis.matrix((6,)), q1)


def test_matrix_basis_copies_the_given_q():
    q = random_orthogonal(4, 3)
    basis = lc.MatrixBasis(q)
    q.zero_()  # the caller's tensor is not the basis's
    assert torch.linalg.matrix_norm(basis.q) > 1


def test_frequencies_are_optional_and_checked():
    assert lc.IdentityBasis().frequencies_squared is None
    assert lc.MatrixBasis(torch.eye(4)).frequencies_squared is None
    lam = torch.rand(2, 3, dtype=torch.float64)
    basis = lc.MatrixBasis(random_orthogonal(6, 0), event_shape=(2, 3), frequencies_squared=lam)
    torch.testing.assert_close(basis.frequencies_squared, lam, rtol=0, atol=0)
    assert "_frequencies_squared" not in basis.state_dict()
    with pytest.raises(ValueError, match="broadcastable to the event shape"):
        lc.MatrixBasis(random_orthogonal(6, 0), event_shape=(2, 3), frequencies_squared=torch.ones(3, 2))
    with pytest.raises(ValueError, match="non-negative"):
        lc.MatrixBasis(torch.eye(2), frequencies_squared=-torch.ones(2))
    with pytest.raises(TypeError, match="IdentityBasis has none"):
        lc.basis.require_frequencies_squared(lc.IdentityBasis(), (1, 2, 3), "IHDM")


@pytest.mark.parametrize("make", [lc.IHDM, lc.BlurringDiffusion, lc.SoftDiffusion])
def test_blur_type_corruptions_take_any_basis_with_frequencies_and_refuse_others_by_name(make):
    """exp(-lambda tau) needs lambda from the basis: a MatrixBasis carrying the DCT's own frequencies and matrix
    gives the DCT corruption's schedule exactly; a basis without frequencies is refused, naming both."""
    shape = (1, 4, 6)
    dct = lc.DCTBasis(4, 6)
    v = torch.from_numpy(scipy.fft.idctn(np.eye(24).reshape(24, 4, 6), axes=(-2, -1), norm="ortho").reshape(24, 24).T)
    k, j = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    lam = torch.from_numpy((np.pi * k / 4) ** 2 + (np.pi * j / 6) ** 2)
    as_matrix = make(shape, basis=lc.MatrixBasis(v, event_shape=(4, 6), frequencies_squared=lam))
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    for a, b in zip(as_matrix.log_alpha_sigma(t), make(shape).log_alpha_sigma(t)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    x = torch.randn(2, *shape, dtype=torch.float64)
    torch.testing.assert_close(as_matrix.basis.to_basis(x), dct.to_basis(x), rtol=0, atol=1e-12)
    with pytest.raises(TypeError, match=f"{make.__name__} needs a basis with frequencies_squared.*IdentityBasis"):
        make(shape, basis=lc.IdentityBasis())
    with pytest.raises(ValueError, match="broadcastable to the event shape"):
        make(shape, basis=lc.MatrixBasis(torch.eye(24), event_shape=(1, 4, 6), frequencies_squared=torch.ones(2, 4, 6)))


def test_a_corruption_on_a_matrix_basis_with_frequencies_is_rebuilt_from_its_file(tmp_path):
    """What a checkpoint stores (module_spec + state dict, through torch.save/load) rebuilds Q and lambda."""
    from lincorrupt.config import build_module, module_spec

    lam = torch.rand(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    basis = lc.MatrixBasis(random_orthogonal(6, 4), event_shape=(2, 3), frequencies_squared=lam)
    c = lc.IHDM((1, 2, 3), basis=basis)
    torch.save({"spec": module_spec(c), "state": c.state_dict()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    rebuilt = build_module(saved["spec"], saved["state"])
    assert isinstance(rebuilt.basis, lc.MatrixBasis)
    torch.testing.assert_close(rebuilt.basis.q, basis.q, rtol=0, atol=0)
    torch.testing.assert_close(rebuilt.basis.frequencies_squared, lam, rtol=0, atol=0)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    for a, b in zip(rebuilt.log_alpha_sigma(t), c.log_alpha_sigma(t)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
