"""Orthogonal bases V in which a corruption is diagonal.

A basis maps data ``x`` to coordinates ``u = V^T x`` (:meth:`Basis.to_basis`) and back,
``x = V u`` (:meth:`Basis.from_basis`). Both act on the trailing ``event_ndim`` dimensions
and accept any number of leading batch dimensions. V is orthogonal, so the map preserves
squared norms and white noise stays white: ``V^T eps ~ N(0, I)`` when ``eps ~ N(0, I)``.

Half-precision inputs (float16, bfloat16) are transformed in float32 and returned in their
own dtype; float32 and float64 are transformed in their own precision.

:meth:`Basis.matrix` gives V itself as a dense (D, D) matrix, for small events. A basis may
also carry :attr:`Basis.frequencies_squared`, the per-coordinate decay rates of heat dissipation
that blur-type corruptions need (:func:`require_frequencies_squared`); :class:`DCTBasis` has them,
:class:`MatrixBasis` when they are given.
"""

from __future__ import annotations

import math

import scipy.fft
import torch
from torch import Tensor

from .config import Configurable

__all__ = ["Basis", "IdentityBasis", "DCTBasis", "MatrixBasis", "dct_matrix", "require_frequencies_squared"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if not dtype.is_floating_point:
        raise TypeError(f"a basis transforms floating-point tensors, got dtype {dtype}")
    return torch.promote_types(dtype, torch.float32)


#: The buffer name under which a basis keeps its squared frequencies (:attr:`Basis.frequencies_squared`).
FREQUENCIES_BUFFER = "_frequencies_squared"


class Basis(Configurable):
    """An orthogonal transform V over the trailing ``event_ndim`` dimensions of a tensor.

    Subclasses implement :meth:`to_basis` and :meth:`from_basis`; all state lives in
    buffers so that ``.to(device)`` moves it; the constructor's arguments are recorded in ``config``.
    A subclass whose coordinates have heat-equation frequencies registers them as the buffer
    named ``FREQUENCIES_BUFFER`` (``"_frequencies_squared"``); :attr:`frequencies_squared` returns it.
    """

    #: number of trailing dimensions the transform acts on (0 for the identity)
    event_ndim: int = 0

    @property
    def frequencies_squared(self) -> Tensor | None:
        """Optional: ``lambda``, the decay rate of each coordinate under the heat equation, or None.

        Blurring by heat dissipation for time ``tau`` multiplies coordinate i by ``exp(-lambda_i tau)``
        (Rissanen et al. 2022; Hoogeboom & Salimans 2023, eq. 9), so a basis that carries
        ``lambda`` is one in which :class:`~lincorrupt.IHDM`, :class:`~lincorrupt.BlurringDiffusion` and
        :class:`~lincorrupt.SoftDiffusion` are diagonal. A tensor broadcastable to the event shape
        (e.g. (H, W) for :class:`DCTBasis`), float64; None for a basis without frequencies.
        """
        return self._buffers.get(FREQUENCIES_BUFFER)

    def matrix(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """V as a dense (D, D) matrix, D = prod(shape), for events of ``shape``: ``u = V^T x`` on flattened events.

        Column j is ``from_basis(e_j)``: the base class transforms the (D, D) identity (O(D^2) memory, for
        small D: a 28x28 image gives a 784x784 matrix); a subclass with a cheaper exact form overrides it.

        Args:
            shape: the event shape the basis acts on, e.g. a corruption's (C, H, W).
            dtype: a floating dtype (default float64).
            device: where to build it (default the CPU).
        """
        self.check_event_shape(tuple(shape))
        d = math.prod(shape)
        eye = torch.eye(d, dtype=dtype, device=device).view(d, *shape)
        return self.from_basis(eye).reshape(d, d).T  # row j of from_basis(I) is V e_j

    def check_event_shape(self, shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless the basis can act on events of ``shape``."""

    def to_basis(self, x: Tensor) -> Tensor:
        """``u = V^T x`` over the trailing dimensions; shape and dtype preserved."""
        raise NotImplementedError

    def from_basis(self, u: Tensor) -> Tensor:
        """``x = V u`` over the trailing dimensions; shape and dtype preserved."""
        raise NotImplementedError



def require_frequencies_squared(basis: Basis, shape: tuple[int, ...], user: str) -> Tensor:
    """``basis.frequencies_squared`` checked for ``user`` (a corruption's or function's name): it exists and
    broadcasts to the event ``shape``; a ``TypeError`` naming the basis otherwise."""
    lam = basis.frequencies_squared
    if lam is None:
        raise TypeError(f"{user} needs a basis with frequencies_squared (the heat equation's decay rate per "
                        f"coordinate, e.g. DCTBasis or MatrixBasis(Q, frequencies_squared=...)); "
                        f"{type(basis).__name__} has none")
    try:
        fits = torch.broadcast_shapes(lam.shape, tuple(shape)) == tuple(shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{user} needs frequencies_squared broadcastable to the event shape {tuple(shape)}; "
                         f"{type(basis).__name__} has shape {tuple(lam.shape)}")
    return lam


class IdentityBasis(Basis):
    """V = I: the basis of standard (isotropic) Gaussian diffusion."""

    def to_basis(self, x: Tensor) -> Tensor:
        return x

    def from_basis(self, u: Tensor) -> Tensor:
        return u

    def matrix(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The (D, D) identity, D = prod(shape)."""
        return torch.eye(math.prod(shape), dtype=dtype, device=device)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` of size (n, n), so that ``D @ x`` is the DCT-II of x.

    ``D[k, j] = sqrt(2/n) * c_k * cos(pi * (2j + 1) * k / (2n))`` with ``c_0 = 1/sqrt(2)``
    and ``c_k = 1`` otherwise (scipy's ``dct(x, type=2, norm="ortho")``). Built in float64.
    """
    j = torch.arange(n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)[:, None]
    d = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


#: On CPU, images with at least this many pixels use pocketfft's O(n log n) DCT instead of
#: two dense matrix products; the crossover was measured by ``benchmarks/bench_basis.py``.
CPU_FFT_MIN_PIXELS = 64 * 64
#: Images with at most this many pixels are transformed by one (HW x HW) Kronecker matrix: one
#: large GEMM beats two batches of tiny ones (patches, toy data; measured as above).
KRON_MAX_PIXELS = 64


class _PocketfftDCT(torch.autograd.Function):
    """Orthonormal 2-D DCT-II (or its inverse) of a CPU tensor by scipy's pocketfft.

    The transform is orthogonal, so its adjoint (the backward pass) is its inverse.
    """

    @staticmethod
    def forward(ctx, x: Tensor, inverse: bool) -> Tensor:
        ctx.inverse = inverse
        return _pocketfft(x, inverse)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _pocketfft(grad, not ctx.inverse), None


def _pocketfft(x: Tensor, inverse: bool) -> Tensor:
    transform = scipy.fft.idctn if inverse else scipy.fft.dctn
    y = transform(x.detach().contiguous().numpy(), axes=(-2, -1), norm="ortho",
                  workers=torch.get_num_threads())
    return torch.from_numpy(y)


class DCTBasis(Basis):
    """Orthonormal 2-D DCT-II over the last two dimensions (height, width).

    ``to_basis(x) = D_H x D_W^T`` equals ``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``;
    coordinate ``(k, l)`` is the frequency with eigenvalue ``lambda[k, l]`` of the Neumann
    Laplacian (:attr:`~Basis.frequencies_squared`), which is why heat dissipation is diagonal here.

    The transform is two dense matrix products (``O(H + W)`` per pixel, but at BLAS speed),
    except on CPU for images of at least ``CPU_FFT_MIN_PIXELS`` pixels, where scipy's
    pocketfft DCT (``O(log HW)`` per pixel) is faster; ``benchmarks/bench_basis.py``
    measures both against ``torch_dct`` and scipy.

    Args:
        height: H, size of dimension -2.
        width: W, size of dimension -1.

    Its :attr:`~Basis.frequencies_squared` are ``lambda[k, l] = (pi k / H)^2 + (pi l / W)^2``, (H, W),
    float64: the heat equation's decay rate of DCT coordinate (k, l); blurring with time tau multiplies it
    by ``exp(-lambda tau)`` (Rissanen et al. 2022; Hoogeboom & Salimans 2023, eq. 9). A buffer, so it
    moves with the basis (and stays float64 inside a corruption); derived from H and W, so not saved.
    """

    event_ndim = 2

    def __init__(self, height: int, width: int):
        super().__init__()
        if int(height) < 1 or int(width) < 1:
            raise ValueError(f"DCTBasis needs positive height and width, got {height}x{width}")
        self.height, self.width = int(height), int(width)
        self.register_buffer("d_h", dct_matrix(self.height, torch.float64), persistent=False)
        self.register_buffer("d_w", dct_matrix(self.width, torch.float64), persistent=False)
        f_h = math.pi * torch.arange(self.height, dtype=torch.float64) / self.height
        f_w = math.pi * torch.arange(self.width, dtype=torch.float64) / self.width
        self.register_buffer(FREQUENCIES_BUFFER, f_h[:, None] ** 2 + f_w[None, :] ** 2, persistent=False)
        self._cast: dict = {}

    def _apply(self, fn, recurse=True):  # drop dtype/device casts when the module moves
        self._cast = {}
        return super()._apply(fn, recurse)

    def _matrices(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, torch.dtype]:
        if x.ndim < 2 or tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"DCTBasis({self.height}, {self.width}) expects (..., {self.height}, "
                f"{self.width}), got shape {tuple(x.shape)}"
            )
        dtype = _compute_dtype(x.dtype)
        key = (dtype, x.device)
        if key not in self._cast:
            small = self.height * self.width <= KRON_MAX_PIXELS  # (D_H kron D_W) vec(x) = vec(D_H x D_W^T)
            kron = torch.kron(self.d_h, self.d_w).to(x.device, dtype) if small else None
            self._cast[key] = (self.d_h.to(x.device, dtype), self.d_w.to(x.device, dtype), kron)
        return (*self._cast[key], dtype)

    def _use_pocketfft(self, x: Tensor) -> bool:
        return x.device.type == "cpu" and self.height * self.width >= CPU_FFT_MIN_PIXELS

    def to_basis(self, x: Tensor) -> Tensor:
        d_h, d_w, kron, dtype = self._matrices(x)
        if self._use_pocketfft(x):
            return _PocketfftDCT.apply(x.to(dtype), False).to(x.dtype)
        if kron is not None:
            return (x.to(dtype).flatten(-2) @ kron.mT).view(x.shape).to(x.dtype)
        # (..., H, W) @ D_W^T transforms rows; D_H @ (...) transforms columns.
        return torch.matmul(d_h, torch.matmul(x.to(dtype), d_w.mT)).to(x.dtype)

    def from_basis(self, u: Tensor) -> Tensor:
        d_h, d_w, kron, dtype = self._matrices(u)
        if self._use_pocketfft(u):
            return _PocketfftDCT.apply(u.to(dtype), True).to(u.dtype)
        if kron is not None:
            return (u.to(dtype).flatten(-2) @ kron).view(u.shape).to(u.dtype)
        return torch.matmul(d_h.mT, torch.matmul(u.to(dtype), d_w)).to(u.dtype)

    def check_event_shape(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 2 or tuple(shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"DCTBasis({self.height}, {self.width}) cannot act on events of shape {shape}"
            )

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"


class MatrixBasis(Basis):
    """A dense orthogonal matrix Q acting on the flattened trailing ``event_shape`` dims.

    ``to_basis(x) = Q^T vec(x)`` and ``from_basis(u) = Q vec(u)``, reshaped back.

    The basis keeps its own float64 copy of Q, the buffer ``q`` (saved with the state dict). A ``q``
    changed in place (``load_state_dict``, an optimiser step of a learned basis) is used by the next
    transform: the copies cast to other dtypes and devices are keyed on ``q``'s version counter and
    storage, so none goes stale. Orthogonality is checked once, here; keeping a changed ``q``
    orthogonal is the caller's job.

    Args:
        Q: (n, n) orthogonal matrix; its columns are the basis vectors.
        event_shape: the trailing dimensions it acts on, with ``prod(event_shape) == n``;
            defaults to ``(n,)``, the last dimension.
        atol: tolerance of the orthogonality check ``Q^T Q = I``.
        frequencies_squared: optional per-coordinate heat-equation decay rates ``lambda`` (non-negative,
            broadcastable to ``event_shape``), making the basis usable by blur-type corruptions
            (:attr:`~Basis.frequencies_squared`); None for a basis without frequencies.
    """

    def __init__(self, Q: Tensor, event_shape: tuple[int, ...] | None = None, atol: float = 1e-5,
                 frequencies_squared: Tensor | None = None):
        super().__init__()
        Q = torch.as_tensor(Q)
        if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
            raise ValueError(f"MatrixBasis needs a square (n, n) matrix, got shape {tuple(Q.shape)}")
        n = Q.shape[0]
        self.event_shape = tuple(event_shape) if event_shape is not None else (n,)
        if math.prod(self.event_shape) != n:
            raise ValueError(f"event_shape {self.event_shape} has {math.prod(self.event_shape)} "
                             f"elements but Q is {n}x{n}")
        q64 = Q.to(torch.float64, copy=True)
        err = (q64.mT @ q64 - torch.eye(n, dtype=torch.float64, device=Q.device)).abs().max().item()
        if err > atol:
            raise ValueError(f"MatrixBasis needs an orthogonal Q (Q^T Q = I); max |Q^T Q - I| = {err:.3g}")
        self.event_ndim = len(self.event_shape)
        self.register_buffer("q", q64)
        if frequencies_squared is not None:
            lam = torch.as_tensor(frequencies_squared).to(torch.float64, copy=True)
            if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
                raise ValueError("MatrixBasis needs finite non-negative frequencies_squared")
            self.register_buffer(FREQUENCIES_BUFFER, lam, persistent=False)
            require_frequencies_squared(self, self.event_shape, "MatrixBasis")
        self._cast: dict = {}

    def _apply(self, fn, recurse=True):
        self._cast = {}
        return super()._apply(fn, recurse)

    def _q(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``q`` in ``dtype`` on ``device``: a cached cast, rebuilt whenever ``q`` changed since it was made."""
        if self.q.dtype == dtype and self.q.device == device:
            return self.q
        stamp = (self.q._version, self.q.data_ptr(), self.q.device)
        key = (dtype, device)
        if key not in self._cast or self._cast[key][0] != stamp:
            self._cast[key] = (stamp, self.q.to(device, dtype, copy=True))
        return self._cast[key][1]

    def _flat(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[x.ndim - self.event_ndim:]) != self.event_shape or x.ndim < self.event_ndim:
            raise ValueError(f"MatrixBasis expects (..., {', '.join(map(str, self.event_shape))}), "
                             f"got shape {tuple(x.shape)}")
        dtype = _compute_dtype(x.dtype)
        flat = x.to(dtype).reshape(*x.shape[: x.ndim - self.event_ndim], -1)
        return flat, self._q(dtype, x.device)

    def to_basis(self, x: Tensor) -> Tensor:
        flat, q = self._flat(x)
        return (flat @ q).reshape(x.shape).to(x.dtype)  # row-vector form of Q^T x

    def from_basis(self, u: Tensor) -> Tensor:
        flat, q = self._flat(u)
        return (flat @ q.mT).reshape(u.shape).to(u.dtype)

    def matrix(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """Q itself (a copy) for events of ``event_shape``; one block of Q per leading index for events with leading
        dimensions that Q does not act on (``block_diag(Q, ..., Q)``)."""
        self.check_event_shape(tuple(shape))
        q = self.q.to(device if device is not None else "cpu", dtype, copy=True)
        blocks = math.prod(shape) // q.shape[0]
        return torch.block_diag(*[q] * blocks) if blocks > 1 else q

    def check_event_shape(self, shape: tuple[int, ...]) -> None:
        if tuple(shape[len(shape) - self.event_ndim:]) != self.event_shape or len(shape) < self.event_ndim:
            raise ValueError(f"MatrixBasis with event_shape {self.event_shape} cannot act on "
                             f"events of shape {shape}")

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}"
