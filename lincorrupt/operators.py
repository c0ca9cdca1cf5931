"""Linear measurement operators ``y = A x`` for restoration (deblurring, super-resolution, inpainting,
colourisation, any dense matrix).

Each operator acts on a batch of images ``x`` (B, *shape) and returns measurements ``y``
(B, *y_shape): ``op(x) = A x``, ``op.adjoint(y) = A^T y`` and ``op.pinv(y) = A^+ y`` (the
Moore-Penrose pseudo-inverse). All are batched, device-agnostic (``op.to(device)``) and compute
in the input's dtype (at least float32).

An operator that is diagonal in an orthogonal basis ``V`` (``A = V diag(h) V^T``, y of the image's
shape) says so: :meth:`Operator.singular_values_in` returns ``h`` for that basis, so restoration
methods take a closed form there instead of an iterative solve. :class:`Blur` is diagonal in the
DCT basis with the corruptions' frequencies; :class:`Mask` in the identity (pixel) basis.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .basis import Basis, DCTBasis, IdentityBasis

__all__ = ["Operator", "Blur", "Downsample", "Mask", "Grey", "Matrix", "LUMA_WEIGHTS"]

#: ITU-R BT.601 luma weights (R, G, B): ``Grey(shape, weights=LUMA_WEIGHTS)`` is the grey image a
#: television (and PIL's ``convert("L")``) makes; the default weights are the plain channel mean.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _rcond(dtype: torch.dtype, size: int) -> float:
    """Singular values below ``rcond * max`` count as zero in a pseudo-inverse (numpy's and
    ``torch.linalg.pinv``'s default, ``eps * max(m, n)``)."""
    return torch.finfo(dtype).eps * size


class Operator(nn.Module):
    """A linear map ``A`` from images (*shape) to measurements (*y_shape), applied to batches.

    Subclasses implement :meth:`_forward`, :meth:`_adjoint` and :meth:`_pinv` on checked (B, ...)
    tensors in a floating dtype; the public methods check the input's shape first.

    Attributes:
        shape: the image shape the operator was built for, e.g. (C, H, W).
        y_shape: the shape of one measurement.
    """

    shape: tuple[int, ...]
    y_shape: tuple[int, ...]

    def __call__(self, x: Tensor) -> Tensor:  # nn.Module's hooks are not needed; keep the signature plain
        """``A x``: (B, *shape) -> (B, *y_shape)."""
        return self._forward(self._check(x, self.shape, "x"))

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^T y``: (B, *y_shape) -> (B, *shape)."""
        return self._adjoint(self._check(y, self.y_shape, "y"))

    def pinv(self, y: Tensor) -> Tensor:
        """``A^+ y``, the Moore-Penrose pseudo-inverse: (B, *y_shape) -> (B, *shape)."""
        return self._pinv(self._check(y, self.y_shape, "y"))

    def singular_values_in(self, basis: Basis) -> Tensor | None:
        """``h`` (broadcastable to *shape, float64) if ``A = V diag(h) V^T`` in ``basis`` V, else None."""
        return None

    @property
    def num_measurements(self) -> int:
        """m, the number of values a measurement holds (the observed pixels for :class:`Mask`)."""
        return math.prod(self.y_shape)

    def measure(self, x: Tensor, noise_std: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """A noisy measurement ``y = A x + noise_std * n``, n standard normal, (B, *y_shape)."""
        y = self(x)
        if noise_std:
            y = y + noise_std * self._noise(y, generator)
        return y

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense matrix ``A``, (m, D) with m = prod(y_shape), D = prod(shape): for tests and small problems."""
        d = math.prod(self.shape)
        eye = torch.eye(d, dtype=dtype, device=self._device()).reshape(d, *self.shape)
        return self(eye).reshape(d, -1).T

    # ------------------------------------------------------------------ subclass hooks
    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _pinv(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def _noise(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)

    # ------------------------------------------------------------------ checks
    def _device(self) -> torch.device:
        return next((b.device for b in self.buffers()), torch.device("cpu"))

    def _check(self, x: Tensor, shape: tuple[int, ...], name: str) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{type(self).__name__} built for images of shape {self.shape} takes {name} of shape "
                             f"(B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
        return x

    def extra_repr(self) -> str:
        return f"shape={self.shape}, y_shape={self.y_shape}"


def _image_shape(shape, name: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} needs an image shape (C, H, W) of positive sizes, got {shape}")
    return shape


class Blur(Operator):
    """Gaussian blur of standard deviation ``sigma`` pixels with reflecting boundaries: the heat kernel.

    Diagonal in the orthonormal 2-D DCT-II basis with the corruptions' frequencies
    ``lambda[k, l] = (pi k / H)^2 + (pi l / W)^2`` (:attr:`DCTBasis.frequencies_squared
    <lincorrupt.basis.DCTBasis>`): ``A = V diag(h) V^T`` with ``h = exp(-lambda sigma^2 / 2)``, the
    heat equation run for time ``tau = sigma^2 / 2`` (Rissanen et al. 2022). For ``sigma >= 1.5``
    it equals ``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=8)`` per channel
    to 1e-5 (a test). Symmetric, so ``adjoint = op``; the pseudo-inverse divides by ``h`` where
    ``h > rcond`` (numpy's cutoff for the dtype) and zeroes the rest.

    Args:
        shape: image shape (C, H, W).
        sigma: the blur's standard deviation in pixels, >= 0.
    """

    def __init__(self, shape: tuple[int, int, int], sigma: float):
        super().__init__()
        self.shape = self.y_shape = _image_shape(shape, "Blur")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"Blur needs a finite sigma >= 0 (pixels), got {sigma!r}")
        self.sigma = float(sigma)
        self.basis = DCTBasis(*self.shape[-2:])
        self.register_buffer("h", torch.exp(-self.basis.frequencies_squared * self.sigma**2 / 2), persistent=False)

    def singular_values_in(self, basis: Basis) -> Tensor | None:
        if isinstance(basis, DCTBasis) and (basis.height, basis.width) == self.shape[-2:]:
            return self.h
        return None

    def _scale(self, x: Tensor, h: Tensor) -> Tensor:
        dtype = _compute_dtype(x)
        return self.basis.from_basis(h.to(dtype) * self.basis.to_basis(x.to(dtype))).to(x.dtype)

    def _forward(self, x: Tensor) -> Tensor:
        return self._scale(x, self.h)

    _adjoint = _forward

    def _pinv(self, y: Tensor) -> Tensor:
        dtype = _compute_dtype(y)
        h = self.h.to(dtype)
        keep = h > _rcond(dtype, h.numel()) * h.max()
        return self._scale(y, torch.where(keep, 1 / torch.where(keep, h, 1.0), 0.0))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, sigma={self.sigma}"


class Downsample(Operator):
    """Average pooling over ``factor x factor`` blocks: (C, H, W) -> (C, H / factor, W / factor).

    Rows of ``A`` are disjoint blocks of weight ``1 / factor^2``, so ``A A^T = I / factor^2``:
    ``adjoint`` spreads each value over its block divided by ``factor^2``, and ``pinv = factor^2 A^T``
    is nearest-neighbour upsampling (every pixel of a block gets the block's value).

    Args:
        shape: image shape (C, H, W), H and W divisible by ``factor``.
        factor: the integer downsampling factor, >= 1.
    """

    def __init__(self, shape: tuple[int, int, int], factor: int):
        super().__init__()
        self.shape = _image_shape(shape, "Downsample")
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"Downsample needs an integer factor >= 1, got {factor!r}")
        c, h, w = self.shape
        if h % factor or w % factor:
            raise ValueError(f"Downsample by {factor} needs H and W divisible by it, got {h}x{w}")
        self.factor = factor
        self.y_shape = (c, h // factor, w // factor)

    def _forward(self, x: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(x, self.factor)

    def _pinv(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._pinv(y) / self.factor**2

    def extra_repr(self) -> str:
        return f"shape={self.shape}, factor={self.factor}"


class Mask(Operator):
    """Inpainting: keep the pixels where ``mask`` is true, zero the rest; y keeps the image's shape.

    ``A = diag(mask)`` is an orthogonal projection, so ``adjoint = pinv = op``; diagonal in the
    identity (pixel) basis. Measurement noise (:meth:`measure`) falls on observed pixels only, and
    :attr:`num_measurements` counts them.

    Args:
        mask: (C, H, W) boolean (or 0/1) tensor, true where the pixel is observed; its shape is the
            image shape.
    """

    def __init__(self, mask: Tensor):
        super().__init__()
        if not isinstance(mask, Tensor) or mask.ndim != 3:
            raise ValueError(f"Mask needs a (C, H, W) tensor of the image's shape, got "
                             f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("a mask holds booleans or 0 / 1 values (true where the pixel is observed)")
        self.shape = self.y_shape = tuple(mask.shape)
        self.register_buffer("mask", mask.to(torch.bool))

    def singular_values_in(self, basis: Basis) -> Tensor | None:
        return self.mask.to(torch.float64) if isinstance(basis, IdentityBasis) else None

    @property
    def num_measurements(self) -> int:
        return int(self.mask.sum())

    def _forward(self, x: Tensor) -> Tensor:
        return torch.where(self.mask, x, 0.0).to(x.dtype)

    _adjoint = _pinv = _forward

    def _noise(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return self._forward(super()._noise(y, generator))


class Grey(Operator):
    """Colour to grey: ``y = sum_c w_c x_c``, (C, H, W) -> (1, H, W).

    By default ``w_c = 1 / C``, the mean of the channels; pass ``weights=LUMA_WEIGHTS`` for the
    BT.601 luma. ``adjoint(y) = w y`` per channel and ``pinv(y) = w y / |w|^2`` (with the mean, each
    channel gets the grey value).

    Args:
        shape: image shape (C, H, W).
        weights: C non-negative channel weights, not all zero; default the mean.
    """

    def __init__(self, shape: tuple[int, int, int], weights: tuple[float, ...] | None = None):
        super().__init__()
        self.shape = _image_shape(shape, "Grey")
        c = self.shape[0]
        w = torch.full((c,), 1.0 / c, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        if w.shape != (c,) or not bool(torch.isfinite(w).all()) or not bool((w >= 0).all()) or not bool(w.sum() > 0):
            raise ValueError(f"Grey needs {c} non-negative channel weights, not all zero, got {weights!r}")
        self.y_shape = (1, *self.shape[1:])
        self.register_buffer("weights", w, persistent=False)

    def _w(self, x: Tensor) -> Tensor:
        return self.weights.to(device=x.device, dtype=_compute_dtype(x)).view(-1, 1, 1)

    def _forward(self, x: Tensor) -> Tensor:
        return (self._w(x) * x).sum(-3, keepdim=True).to(x.dtype)

    def _adjoint(self, y: Tensor) -> Tensor:
        return (self._w(y) * y).to(y.dtype)

    def _pinv(self, y: Tensor) -> Tensor:
        w = self._w(y)
        return (w * y / w.square().sum()).to(y.dtype)


class Matrix(Operator):
    """Any dense linear map ``H`` (m, D) on images of ``shape`` (prod(shape) = D): ``y = H x.flatten()``.

    The pseudo-inverse is computed once, in float64, by ``torch.linalg.pinv`` (singular values below
    ``eps * max(m, D) * s_max`` count as zero).

    Args:
        H: (m, D) floating matrix.
        shape: image shape, any number of dimensions, with prod(shape) = D.
    """

    def __init__(self, H: Tensor, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(int(d) for d in shape)
        if not isinstance(H, Tensor) or H.ndim != 2 or not H.is_floating_point():
            raise ValueError("Matrix needs a 2-D floating tensor H of shape (m, D)")
        if H.shape[1] != math.prod(self.shape):
            raise ValueError(f"Matrix: H has {H.shape[1]} columns but images of shape {self.shape} have "
                             f"{math.prod(self.shape)} values")
        self.y_shape = (H.shape[0],)
        self.register_buffer("H", H.detach().to(torch.float64))
        self.register_buffer("H_pinv", torch.linalg.pinv(self.H), persistent=False)

    def _product(self, matrix: Tensor, v: Tensor, shape: tuple[int, ...]) -> Tensor:
        dtype = _compute_dtype(v)
        return (v.flatten(1).to(dtype) @ matrix.to(dtype).T).reshape(-1, *shape).to(v.dtype)

    def _forward(self, x: Tensor) -> Tensor:
        return self._product(self.H, x, self.y_shape)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._product(self.H.T, y, self.shape)

    def _pinv(self, y: Tensor) -> Tensor:
        return self._product(self.H_pinv, y, self.shape)
