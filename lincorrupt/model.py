"""A trained model as one object: network, corruption and prediction kind, saved and loaded in one call.

    model = lc.DiffusionModel(UNet(...), lc.BlurringDiffusion((3, 32, 32)), prediction="v")
    loss = model.loss(x)                  # lc.diffusion_loss with the model's prediction
    x0 = model.sample(64)                 # the corruption's fast_sampling: 20 network evaluations
    bpd = model.bits_per_dim(x)           # lc.bits_per_dim with the model's prediction
    model.save("model.pt")
    model = lc.load("runs/blurring")      # a run folder, a Trainer checkpoint or a saved model

The prediction kind is fixed once, at construction, so training and sampling cannot disagree.
A file describes its model as plain data (:func:`lincorrupt.config.module_spec`: the classes
and constructor arguments of the network and the corruption, the corruption's buffers with
its fitted prior, the prediction), so :func:`load` needs no code of the script that trained it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import SpecError, build_module, class_name, module_spec, restore_state
from .corruption import DiagonalizableCorruption
from .likelihood import ELBO, bits_per_dim, elbo
from .losses import diffusion_loss
from .predictions import get_prediction
from .priors import Prior
from .restoration import restore
from .sampling import sample

__all__ = ["DiffusionModel", "load", "from_checkpoint", "model_record", "ModelLoadError"]

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A file holds a checkpoint from which no model can be rebuilt (what it lacks is named)."""


class DiffusionModel(nn.Module):
    """A network ``network(z_t, t)`` trained to denoise ``corruption``, predicting ``prediction``.

    Args:
        network: ``network(z_t, t) -> Tensor`` of z_t's shape (B, *corruption.shape), or
            ``network(z_t, t, y)`` with class labels y (B,) if it has ``num_classes``; an
            ``nn.Module`` deriving from :class:`~lincorrupt.config.Configurable` (e.g.
            :class:`lincorrupt.nn.UNet`) can be saved and loaded with :meth:`save` / :func:`load`.
        corruption: the forward process.
        prediction: what the network outputs: "eps", "x", "v" or "residual" (:mod:`lincorrupt.predictions`);
            required, and fixed for every call.

    Attributes:
        info: plain data about how the model was made (a loaded checkpoint's step, training
            config and path); saved with it.
        grids: fitted time grids ``{(method, steps): times}`` (float64, CPU) of :meth:`fit_grid`; saved with it,
            and used by :meth:`sample` for that sampler and number of network evaluations.
    """

    def __init__(self, network: nn.Module, corruption: DiagonalizableCorruption, prediction: str):
        super().__init__()
        if not isinstance(corruption, DiagonalizableCorruption):
            raise TypeError(f"corruption must be a DiagonalizableCorruption, got {type(corruption).__name__}")
        if not callable(network):
            raise TypeError(f"network must be callable as network(z_t, t), got {type(network).__name__}")
        self.prediction = get_prediction(prediction).name
        self.network, self.corruption = network, corruption
        self.info: dict[str, Any] = {}
        self.grids: dict[tuple[str, int], Tensor] = {}

    def forward(self, z_t: Tensor, t: Tensor, *y: Tensor) -> Tensor:
        """The network's output at ``(z_t, t)``, or ``(z_t, t, y)`` for a conditional network: z_t (B, *shape),
        t (B,), y (B,) class indices (-1: none); of kind :attr:`prediction`."""
        return self.network(z_t, t, *y)

    @property
    def num_classes(self) -> int | None:
        """K of a class-conditional network (its ``num_classes`` attribute), None for an unconditional one."""
        return getattr(self.network, "num_classes", None)

    def loss(self, x: Tensor, **options) -> Tensor:
        """:func:`lincorrupt.diffusion_loss` of ``x`` (B, *shape) in [-1, 1]; options as there (``y``: labels of a
        conditional network), not ``prediction``."""
        return diffusion_loss(self.network, self.corruption, x, prediction=self.prediction, **_fixed(options))

    def sample(self, num_samples: int, **options) -> Tensor:
        """:func:`lincorrupt.sample`: (N, *shape) samples, the network in eval mode meanwhile.

        Options as there (``steps``, ``method``, ``grid``, ``generator``, ``labels`` and ``guidance`` of a
        conditional network, ...), but not ``prediction``; ``dtype`` defaults to the network's (a ``.double()``
        model samples in float64, a ``.half()`` one returns float16). Each of ``method``, ``grid`` and ``steps``
        left out comes from :meth:`sampling_defaults`: the corruption's
        :attr:`~lincorrupt.DiagonalizableCorruption.fast_sampling`, 20 network evaluations (for blurring
        diffusion DPM-Solver++(3M) on the "data" grid), the sampler the Trainer's evaluations and the Results
        page's study use; the Results page (docs/results.md) compares it with slower samplers, such as
        ``method="ancestral", grid="uniform", steps=100``, on trained models. No progress bar unless
        ``progress=True``.
        The N images are one batch, held at once: for many, call it in batches of a few hundred with one
        ``generator``. Without ``grid`` (and ``last``), a grid fitted for this ``method`` and ``steps``
        (:meth:`fit_grid`) is used, and logged at INFO level (:meth:`fitted_grid` says which one beforehand).
        """
        options = {"dtype": _dtype_of(self.network), **_fixed(options)}
        fitted = None if "grid" in options or "last" in options else self.fitted_grid(**options)
        if fitted is not None:
            log.info("sampling with the grid fitted for %s with %d steps", *self._grid_key(**options))
            options = {**options, "grid": fitted}
        with _eval(self.network):
            return sample(self.network, self.corruption, num_samples, prediction=self.prediction,
                          **{**self.sampling_defaults(), **options})

    def sampling_defaults(self) -> dict[str, Any]:
        """``method``, ``grid`` and ``steps`` that :meth:`sample` uses when not given: the corruption's
        :attr:`~lincorrupt.DiagonalizableCorruption.fast_sampling`, whose "data" grid becomes "logsnr" when the
        corruption has no data statistics (a model not trained by the Trainer and without
        :meth:`~lincorrupt.DiagonalizableCorruption.fit_data_statistics`; the Results page, docs/results.md,
        compares the two grids on a trained model)."""
        fast = self.corruption.fast_sampling._asdict()
        if fast["grid"] == "data" and getattr(self.corruption, "data_var", None) is None:
            fast["grid"] = "logsnr"
        return fast

    def fit_grid(self, data, steps: int, method: str = "dpm++2m", **options) -> Tensor:
        """Fit the time grid of ``steps`` network evaluations for ``method`` to ``data``
        (:func:`lincorrupt.fit_grid`: a :class:`~lincorrupt.GaussianData` or training images (N, *shape)), keep it
        in :attr:`grids` (saved with the model) and return it; :meth:`sample` then uses it for that method and
        ``steps``. Options as there (``t_last_min``, ``max_ratio``, ...)."""
        from .grid_fit import fit_grid
        times = fit_grid(self.corruption, data, steps, method, **options)
        self.grids[(method, steps)] = times.detach().cpu()
        return times

    def fitted_grid(self, method: str | None = None, steps: int | None = None, **_) -> Tensor | None:
        """The grid :meth:`sample` uses for ``method`` and ``steps`` (defaults those of :meth:`sampling_defaults`)
        when given no ``grid``: the fitted one of :attr:`grids`, or None (then the named default grid)."""
        return self.grids.get(self._grid_key(method, steps))

    def _grid_key(self, method: str | None = None, steps: int | None = None, **_) -> tuple[str, int]:
        defaults = self.sampling_defaults()
        return (defaults["method"] if method is None else method, defaults["steps"] if steps is None else steps)

    def restore(self, y: Tensor, operator, **options) -> Tensor:
        """:func:`lincorrupt.restore`: (B, *shape) restorations of measurements ``y = A x + noise`` (B, *y_shape)
        by the :class:`~lincorrupt.operators.Operator` A, the network in eval mode meanwhile. Options as there
        (``noise_std``, ``method``, ``steps``, ``sampler``, ``generator``, ...), but not ``prediction``."""
        with _eval(self.network):
            return restore(self.network, self.corruption, y, operator, prediction=self.prediction, **_fixed(options))

    def elbo(self, x: Tensor, **options) -> ELBO:
        """:func:`lincorrupt.elbo` of 8-bit images ``x`` (B, *shape) in [-1, 1], the network in eval mode."""
        with _eval(self.network):
            return elbo(self.network, self.corruption, x, prediction=self.prediction, **_fixed(options))

    def bits_per_dim(self, x: Tensor, **options) -> Tensor:
        """:func:`lincorrupt.bits_per_dim` of 8-bit images ``x`` (B, *shape) in [-1, 1], (B,), the network in eval
        mode; options as :meth:`elbo`."""
        with _eval(self.network):
            return bits_per_dim(self.network, self.corruption, x, prediction=self.prediction, **_fixed(options))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` atomically, with a checksum (:func:`lincorrupt.train.save_checkpoint`);
        :func:`load` rebuilds it. Returns the path written.

        Raises:
            lincorrupt.config.SpecError: the network or the corruption does not record its constructor arguments.
            lincorrupt.train.CheckpointError: ``path`` is a folder (a run's folder holds its training checkpoint:
                save the model to a file name, e.g. ``folder / "model.pt"``).
        """
        from lincorrupt.train.checkpoint import save_checkpoint
        return save_checkpoint({"diffusion_model": model_record(self.network, self.corruption, self.prediction),
                                "model": _cpu(self.network.state_dict()), "info": self.info,
                                "grids": grid_records(self.grids)}, path)

    def extra_repr(self) -> str:
        return f"prediction={self.prediction!r}"

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.cuda()``, ``.half()``, ``.double()``: the network follows; the corruption follows the
        device only, its tables (log-SNR, bases, a fitted prior) keep their precision, which the sampler's
        float32-or-wider arithmetic needs."""
        self.corruption._apply(lambda t: _device_only(fn, t), recurse)
        if isinstance(self.network, nn.Module):
            self.network._apply(fn, recurse)
        return self


def _device_only(fn, t: Tensor) -> Tensor:
    """``fn(t)`` if it keeps ``t``'s dtype, else ``t`` moved to the device ``fn`` chose."""
    moved = fn(t)
    return moved if moved.dtype == t.dtype else t.to(moved.device)


def _dtype_of(network) -> torch.dtype:
    """The dtype of the network's first floating-point parameter: the one it computes in (float32 if none)."""
    params = network.parameters() if isinstance(network, nn.Module) else ()
    return next((p.dtype for p in params if p.is_floating_point()), torch.float32)


def model_record(network: nn.Module, corruption: DiagonalizableCorruption, prediction: str) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: the specs of network and corruption, the
    corruption's state dict (buffers and fitted prior) and the prediction kind.

    Raises:
        lincorrupt.config.SpecError: a module does not record its constructor arguments.
    """
    state = _cpu(corruption.state_dict())
    return {"network": module_spec(network), "corruption": module_spec(corruption, state),
            "corruption_state": state, "prediction": get_prediction(prediction).name}


def grid_records(grids: dict[tuple[str, int], Tensor]) -> list[dict[str, Any]]:
    """Fitted grids as a checkpoint stores them: ``[{"method", "steps", "times"}]``."""
    return [{"method": m, "steps": n, "times": t.detach().cpu()} for (m, n), t in grids.items()]


def model_entry(network: nn.Module, corruption: DiagonalizableCorruption, prediction: str) -> dict[str, Any]:
    """``{"diffusion_model": model_record(...)}`` for a checkpoint when both modules record their
    constructor arguments, else ``{}`` (a Trainer may train any network; only such a run lacks it)."""
    try:
        return {"diffusion_model": model_record(network, corruption, prediction)}
    except SpecError:
        return {}


def load(path: str | os.PathLike, map_location: str | torch.device | None = None, ema: bool = True) -> DiffusionModel:
    """Rebuild the model of a run folder, a Trainer checkpoint or a file of :meth:`DiffusionModel.save`.

    Loads with ``weights_only`` and checks the checksum; a damaged ``checkpoint.pt`` falls back to
    its ``.prev`` (saying so on stderr). Checkpoints of the CIFAR-10 example (``model_args``) and of
    the demo written before models recorded their arguments load too.

    Args:
        path: a file, or a folder holding ``checkpoint.pt``.
        map_location: device to put the model on; default the CPU.
        ema: the EMA weights of a training checkpoint (default), else the raw ones.
    Returns:
        The :class:`DiffusionModel` in eval mode, its ``info`` holding the ``step``, the training
        ``config`` and the ``path`` loaded.

    Raises:
        lincorrupt.train.CheckpointError: no file, or a damaged or foreign one.
        ModelLoadError: the checkpoint does not say how to build its network or corruption.
    """
    from lincorrupt.train.checkpoint import load_latest
    found, state = load_latest(path, "cpu")
    model = from_checkpoint(state, found, ema)
    return (model if map_location is None else model.to(map_location)).eval()


def from_checkpoint(state: dict[str, Any], path: str | os.PathLike = "", ema: bool = True) -> DiffusionModel:
    """The :class:`DiffusionModel` of a checkpoint already loaded (:func:`lincorrupt.train.load_checkpoint`);
    ``path`` names it in errors and ``info``. See :func:`load`.

    The network is first built on the meta device (no memory) and its parameter shapes compared with
    the saved weights, so a small file that records a huge network is refused before anything is
    allocated.

    Raises:
        ModelLoadError: the checkpoint does not say how to build its network or corruption, is malformed,
            or its weights do not fit the network it describes.
    """
    found = Path(path)
    try:
        if not isinstance(state, dict):
            raise ModelLoadError(f"{found} holds a {type(state).__name__}, expected a dict of entries")
        if "diffusion_model" in state:
            record = _entries(state, "diffusion_model", dict, found)
            corruption = build_module(_entries(record, "corruption", dict, found, "diffusion_model"),
                                      _entries(record, "corruption_state", dict, found, "diffusion_model"),
                                      expected=DiagonalizableCorruption)
            network_spec = _entries(record, "network", dict, found, "diffusion_model")
            prediction = _entries(record, "prediction", str, found, "diffusion_model")
        else:
            network_spec, corruption, prediction = _legacy_parts(state, found)
        weights = _entries(state, "ema" if ema and "ema" in state else "model", dict, found)
        network = _network(network_spec, weights, found)
        model = DiffusionModel(network, corruption, prediction)
        model.info = {**_entries(state, "info", dict, found, default={}), "path": str(found)}
        model.grids = {(g["method"], g["steps"]): g["times"]
                       for g in _entries(state, "grids", list, found, default=[])}
    except ModelLoadError:
        raise
    except (SpecError, RuntimeError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise ModelLoadError(f"{found}: cannot rebuild the model ({type(e).__name__}: {e})") from e
    for key in ("step", "config", "world_size"):
        if key in state:
            model.info[key] = state[key]
    return model


_MISSING = object()


def _entries(mapping: dict[str, Any], key: str, kind: type, path: Path, where: str = "", default: Any = _MISSING):
    """``mapping[key]``, checked to be a ``kind`` (``default`` when absent, if given).

    Raises:
        ModelLoadError: the entry is missing or of another type, naming it and the entries there are.
    """
    name = f"{where}[{key!r}]" if where else repr(key)
    if key not in mapping:
        if default is not _MISSING:
            return default
        raise ModelLoadError(f"{path} is malformed: it lacks the entry {name} (it has: "
                             f"{', '.join(map(repr, sorted(mapping, key=repr))) or 'nothing'})")
    if not isinstance(mapping[key], kind):
        raise ModelLoadError(f"{path} is malformed: its entry {name} is a {type(mapping[key]).__name__}, "
                             f"expected a {kind.__name__}")
    return mapping[key]


def _network(spec: dict[str, Any], weights: dict[str, Tensor], path: Path) -> nn.Module:
    """The network of ``spec`` holding ``weights``, built for real only once its parameter and buffer
    shapes, built on the meta device, equal those of ``weights``.

    A network whose constructor cannot run on the meta device (it computes with its tensors) is built
    directly: only a class that the loading program defined or imported can be such (the library's
    networks build on the meta device).

    Raises:
        ModelLoadError: the recorded network's state differs from the saved weights (names and shapes).
        SpecError: the spec cannot be rebuilt.
    """
    try:
        with torch.device("meta"):
            shell = build_module(spec)
    except (RuntimeError, NotImplementedError):
        shell = None
    if shell is not None:
        _check_fit({k: tuple(v.shape) for k, v in shell.state_dict().items()}, weights, path)
    network = build_module(spec)
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: the weights do not fit the network the file describes: {e}") from e
    return network


def _check_fit(expected: dict[str, tuple[int, ...]], weights: dict[str, Tensor], path: Path) -> None:
    """Refuse ``weights`` whose names or shapes differ from ``expected`` (the recorded network's state).

    Raises:
        ModelLoadError: naming the missing and unexpected entries and the first few shape differences.
    """
    bad = [k for k, v in weights.items() if not isinstance(v, Tensor)]
    if bad:
        raise ModelLoadError(f"{path}: the weights hold non-tensors under {', '.join(map(repr, bad[:5]))}")
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    shapes = [f"{k}: recorded {expected[k]}, saved {tuple(weights[k].shape)}" for k in expected
              if k in weights and expected[k] != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing {', '.join(missing[:5])}" if missing else "",
                 f"unexpected {', '.join(unexpected[:5])}" if unexpected else "", "; ".join(shapes[:3])]
        raise ModelLoadError(f"{path}: the weights do not fit the network the file describes "
                             f"({'; '.join(p for p in parts if p)})")


def _legacy_parts(state: dict[str, Any], path: Path) -> tuple[dict[str, Any], DiagonalizableCorruption, str]:
    """The network's spec, the corruption and the prediction of a checkpoint written before models
    recorded their arguments: the CIFAR-10 example's (``extra.model_args``, ``extra.buffers``) or
    the demo's (``extra.unet``, ``extra.corruption`` settings of the corruption class
    named by ``state["corruption"]``)."""
    extra = state.get("extra", {})
    config = state.get("config", {})
    if "model_args" in extra:
        args = extra["model_args"]
        corruption = {"class": _LEGACY_EXAMPLE_NAMES.get(args["corruption"], args["corruption"]),
                      "shape": args["shape"], "settings": args["settings"]}
        unet, buffers, prediction = args["unet"], extra.get("buffers", {}), args["prediction"]
    elif "unet" in extra and "corruption" in state:
        corruption = {"class": state["corruption"], "shape": state["shape"], "settings": extra.get("corruption", {})}
        unet, buffers, prediction = extra["unet"], extra.get("buffers", {}), config.get("prediction")
    else:
        raise ModelLoadError(f"{path} does not record how to build its network and corruption (its entries: "
                             f"{', '.join(sorted(state))}); a Trainer whose network derives from "
                             f"lincorrupt.config.Configurable (e.g. lincorrupt.nn.UNet) writes them")
    if prediction is None:
        raise ModelLoadError(f"{path} does not record what its network predicts (eps, x, v or residual)")
    cls = _corruption_class(corruption["class"], path)
    built = cls(tuple(corruption["shape"]), **corruption["settings"])
    prior_keys = {k.removeprefix("prior."): v for k, v in buffers.items() if k.startswith("prior.")}
    if prior_keys:
        built.prior = _prior_from_buffers(prior_keys, path)
    if buffers:
        restore_state(built, buffers)
    return _unet_spec(unet), built, prediction


#: The CIFAR-10 example's --corruption names (its checkpoints' ``model_args["corruption"]``).
_LEGACY_EXAMPLE_NAMES = {"blurring": "BlurringDiffusion", "ddpm": "DDPM", "ihdm": "IHDM"}


def _corruption_class(name: str, path: Path) -> type[DiagonalizableCorruption]:
    """The corruption class of this name among those defined (an old checkpoint names its class only)."""
    found = [c for c in _subclasses(DiagonalizableCorruption) if c.__name__ == name]
    if len(found) != 1:
        raise ModelLoadError(f"{path} was trained with corruption {name!r}, which is "
                             f"{'not defined in this process' if not found else 'ambiguous'}")
    return found[0]


def _prior_from_buffers(buffers: dict[str, Tensor], path: Path) -> Prior:
    """The prior whose constructor takes exactly these buffers by name (an old checkpoint stores buffers only)."""
    import inspect
    for cls in _subclasses(Prior):
        if set(inspect.signature(cls.__init__).parameters) - {"self"} == set(buffers):
            return cls(**buffers)
    raise ModelLoadError(f"{path}: no prior takes the saved buffers {sorted(buffers)}")


def _subclasses(cls: type) -> list[type]:
    found, todo = [], [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def _unet_spec(unet_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The spec of ``UNet(**unet_kwargs)`` (without building one: the defaults fill in at :func:`load`)."""
    from lincorrupt.nn import UNet
    return {"class": class_name(UNet), "config": {k: {"value": v} for k, v in unet_kwargs.items()}}


def _cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def _fixed(options: dict[str, Any]) -> dict[str, Any]:
    if "prediction" in options:
        raise TypeError("a DiffusionModel's prediction is fixed at construction; build another DiffusionModel "
                        "for another prediction kind")
    return options


class _eval:
    """``with _eval(net):`` net in eval mode inside the block, its previous mode restored after."""

    def __init__(self, net: nn.Module):
        self.net = net

    def __enter__(self):
        self.training = getattr(self.net, "training", False)
        if isinstance(self.net, nn.Module):
            self.net.eval()

    def __exit__(self, *exc):
        if isinstance(self.net, nn.Module):
            self.net.train(self.training)
