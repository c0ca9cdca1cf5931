"""A trained model as one object: network, corruption and prediction kind, saved and loaded in one call.

    model = lc.DiffusionModel(UNet(...), lc.BlurringDiffusion((3, 32, 32)), prediction="v")
    loss = model.loss(x)                  # lc.diffusion_loss with the model's prediction
    x0 = model.sample(64, steps=50, method="dpm++2m", grid="logsnr")
    model.save("model.pt")
    model = lc.load("runs/blurring")      # a run folder, a Trainer checkpoint or a saved model

The prediction kind is fixed once, at construction, so training and sampling cannot disagree.
A file describes its model as plain data (:func:`lincorrupt.config.module_spec`: the classes
and constructor arguments of the network and the corruption, the corruption's buffers with
its fitted prior, the prediction), so :func:`load` needs no code of the script that trained it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import SpecError, build_module, class_name, module_spec, restore_state
from .corruption import DiagonalizableCorruption
from .likelihood import ELBO, elbo
from .losses import diffusion_loss
from .predictions import get_prediction
from .priors import Prior
from .restoration import restore
from .sampling import sample

__all__ = ["DiffusionModel", "load", "from_checkpoint", "model_record", "ModelLoadError"]


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
        prediction: what the network outputs: "eps", "x" or "v" (:mod:`lincorrupt.predictions`);
            required, and fixed for every call.

    Attributes:
        info: plain data about how the model was made (a loaded checkpoint's step, training
            config and path); saved with it.
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
        conditional network, ...), but not ``prediction``. The N images
        are one batch, held at once: for many, call it in batches of a few hundred with one ``generator``.
        """
        with _eval(self.network):
            return sample(self.network, self.corruption, num_samples, prediction=self.prediction, **_fixed(options))

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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to ``path`` atomically, with a checksum (:func:`lincorrupt.train.save_checkpoint`);
        :func:`load` rebuilds it. Returns the path written.

        Raises:
            lincorrupt.config.SpecError: the network or the corruption does not record its constructor arguments.
        """
        from lincorrupt.train.checkpoint import save_checkpoint
        return save_checkpoint({"diffusion_model": model_record(self.network, self.corruption, self.prediction),
                                "model": _cpu(self.network.state_dict()), "info": self.info}, path)

    def extra_repr(self) -> str:
        return f"prediction={self.prediction!r}"


def model_record(network: nn.Module, corruption: DiagonalizableCorruption, prediction: str) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: the specs of network and corruption, the
    corruption's state dict (buffers and fitted prior) and the prediction kind.

    Raises:
        lincorrupt.config.SpecError: a module does not record its constructor arguments.
    """
    state = _cpu(corruption.state_dict())
    return {"network": module_spec(network), "corruption": module_spec(corruption, state),
            "corruption_state": state, "prediction": get_prediction(prediction).name}


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

    Raises:
        ModelLoadError: the checkpoint does not say how to build its network or corruption.
    """
    found = Path(path)
    try:
        if "diffusion_model" in state:
            record = state["diffusion_model"]
            corruption = build_module(record["corruption"], record["corruption_state"],
                                      expected=DiagonalizableCorruption)
            network_spec, prediction = record["network"], record["prediction"]
        else:
            network_spec, corruption, prediction = _legacy_parts(state, found)
        network = build_module(network_spec)
    except (SpecError, RuntimeError, TypeError) as e:
        raise ModelLoadError(f"{found}: cannot rebuild the model: {e}") from e
    weights = state["ema"] if ema and "ema" in state else state["model"]
    try:
        network.load_state_dict(weights)
    except RuntimeError as e:
        raise ModelLoadError(f"{found}: the weights do not fit the network the file describes: {e}") from e
    model = DiffusionModel(network, corruption, prediction)
    model.info = {**state.get("info", {}), "path": str(found)}
    for key in ("step", "config", "world_size"):
        if key in state:
            model.info[key] = state[key]
    return model


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
        raise ModelLoadError(f"{path} does not record what its network predicts (eps, x or v)")
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
