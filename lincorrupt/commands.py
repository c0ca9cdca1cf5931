"""The ``lincorrupt`` command line: look into a trained model and sample from it.

    lincorrupt info runs/blurring                  # corruption, settings, prediction, step, parameters, recipe
    lincorrupt sample runs/blurring -n 64 -o grid.png --method dpm++2m --grid logsnr --steps 50 --seed 0
    lincorrupt sample runs/conditional -n 100 --labels 3 --guidance 2   # a class-conditional model: class 3
    lincorrupt restore runs/blurring --task deblur --sigma 2 --input blurred.png -o restored.png

RUN_OR_CKPT is a run folder (its ``checkpoint.pt``), a Trainer checkpoint or a file of
:meth:`lincorrupt.DiffusionModel.save`; :func:`lincorrupt.load` reads it (EMA weights).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from . import operators
from .model import DiffusionModel, ModelLoadError, load
from .restoration import METHODS
from .sampling import GRIDS, SAMPLERS

__all__ = ["main", "describe"]


def describe(model: DiffusionModel) -> dict:
    """What ``lincorrupt info`` prints, as plain data: path, corruption and its settings, prediction,
    number of classes (None: unconditional), step, parameter count and the training recipe (when the
    file holds one)."""
    info = model.info
    settings = {k: v for k, v in model.corruption.config.items() if not isinstance(v, (torch.Tensor, torch.nn.Module))}
    return {"path": info.get("path"), "corruption": type(model.corruption).__name__,
            "settings": settings, "prior": type(model.corruption.prior).__name__,
            "prediction": model.prediction, "num_classes": model.num_classes, "step": info.get("step"),
            "network": type(model.network).__name__,
            "parameters": sum(p.numel() for p in model.network.parameters()),
            "trained_with": info.get("config")}


def _info(args) -> None:
    print(json.dumps(describe(load(args.run)), indent=2, default=str))


def _sample(args) -> None:
    from torchvision.utils import save_image

    from .data.images import to_unit_range
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load(args.run, map_location=device)
    generator = torch.Generator(device).manual_seed(args.seed)
    x = model.sample(args.num_samples, steps=args.steps, method=args.method, grid=args.grid, generator=generator,
                     progress=args.progress, **_conditioning(model, args))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_unit_range(x.float().cpu()), out, nrow=int(math.ceil(math.sqrt(args.num_samples))))
    print(f"{args.num_samples} samples ({args.method}, {args.steps} steps, {args.grid} grid, step "
          f"{model.info.get('step', '?')} of {model.info['path']}) -> {out}")


def _conditioning(model: DiffusionModel, args) -> dict:
    """``labels`` and ``guidance`` of a class-conditional model: ``--labels`` repeated over the grid (default:
    the classes in turn, one per image); nothing for an unconditional one.

    Raises:
        ValueError: ``--labels`` or ``--guidance`` for an unconditional model.
    """
    if model.num_classes is None:
        if args.labels is not None or args.guidance != 1:
            raise ValueError(f"{model.info['path']} is an unconditional model: --labels and --guidance need a "
                             f"class-conditional one (trained with labels, num_classes in `lincorrupt info`)")
        return {}
    classes = torch.tensor(args.labels if args.labels is not None else range(model.num_classes))
    return {"labels": classes.repeat(-(-args.num_samples // len(classes)))[:args.num_samples],
            "guidance": args.guidance}


#: ``lincorrupt restore``'s default measurement noise: 8-bit quantisation of images in [-1, 1], a step of
#: 2 / 255 rounded, whose error is uniform with standard deviation 2 / 255 / sqrt(12).
QUANTISATION_STD = 2 / 255 / math.sqrt(12)


def _box_mask(shape: tuple[int, ...], args) -> operators.Mask:
    """Inpainting of ``--box TOP LEFT HEIGHT WIDTH`` (default: the centre half of each side)."""
    _, h, w = shape
    top, left, height, width = args.box or (h // 4, w // 4, h // 2, w // 2)
    if not (0 <= top < top + height <= h and 0 <= left < left + width <= w):
        raise ValueError(f"--box {top} {left} {height} {width} does not fit in a {h}x{w} image")
    mask = torch.ones(shape, dtype=torch.bool)
    mask[:, top:top + height, left:left + width] = False
    return operators.Mask(mask)


#: ``--task`` of ``lincorrupt restore``: the operator, built from the model's image shape and the flags.
TASKS = {
    "deblur": lambda shape, args: operators.Blur(shape, args.sigma),
    "sr": lambda shape, args: operators.Downsample(shape, args.factor),
    "inpaint": _box_mask,
    "grey": lambda shape, args: operators.Grey(shape),
}


def _read_image(path: str, shape: tuple[int, ...]) -> torch.Tensor:
    """An image file as a (1, *shape) tensor in [-1, 1] (grey for one channel, RGB for three)."""
    import numpy as np
    from PIL import Image

    from .data.images import to_model_range
    with Image.open(path) as img:
        img = img.convert("L" if shape[0] == 1 else "RGB")
        if (img.height, img.width) != tuple(shape[1:]):
            raise ValueError(f"{path} is {img.height}x{img.width} but this task's measurement is "
                             f"{shape[1]}x{shape[2]} ({'x'.join(map(str, shape))})")
        array = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, -1)
    return to_model_range(torch.from_numpy(array.copy()).permute(2, 0, 1)[None])


def _restore(args) -> None:
    from torchvision.utils import save_image

    from .data.images import to_unit_range
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load(args.run, map_location=device)
    operator = TASKS[args.task](model.corruption.shape, args).to(device)
    if args.degrade:
        y = operator(_read_image(args.input, model.corruption.shape).to(device))
    else:
        y = _read_image(args.input, operator.y_shape).to(device)
    generator = torch.Generator(device).manual_seed(args.seed)
    x = model.restore(y.expand(args.num_samples, *y.shape[1:]), operator, noise_std=args.noise_std,
                      method=args.method, steps=args.steps, sampler=args.sampler, generator=generator,
                      progress=args.progress)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_unit_range(torch.cat([operator.pinv(y), x]).float().cpu()), out, nrow=args.num_samples + 1)
    print(f"{args.num_samples} restoration(s) ({args.task}, {args.method}, {args.steps} steps, noise_std "
          f"{args.noise_std:.4g}) of {args.input} -> {out} (first: the pseudo-inverse of the measurement)")


def _labels(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class indices separated by commas, e.g. 3 or 0,1,2, got {text!r}") \
            from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lincorrupt", description=__doc__.split("\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="describe a trained model")
    info.add_argument("run", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint file")
    info.set_defaults(run_command=_info)
    s = commands.add_parser("sample", help="sample a grid of images from a trained model (EMA weights)")
    s.add_argument("run", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint file")
    s.add_argument("-n", "--num-samples", type=_positive, default=64, help="images in the grid (default 64)")
    s.add_argument("-o", "--output", default="samples.png", help="PNG to write (default samples.png)")
    s.add_argument("--method", default="ancestral", choices=sorted(SAMPLERS), help="sampler (default ancestral)")
    s.add_argument("--grid", default="uniform", choices=sorted(GRIDS), help="time grid (default uniform)")
    s.add_argument("--steps", type=_positive, default=250, help="network evaluations (default 250)")
    s.add_argument("--seed", type=int, default=0, help="seed of the prior and the sampler's noise (default 0)")
    s.add_argument("--labels", type=_labels, default=None,
                   help="class-conditional models: class indices, repeated over the grid (-1: unconditional; "
                        "default: the classes in turn)")
    s.add_argument("--guidance", type=float, default=1.0,
                   help="class-conditional models: classifier-free guidance scale (1: the conditional model)")
    s.add_argument("--device", default="", help="device (default: cuda when available, else cpu)")
    s.add_argument("--progress", action="store_true", help="show a progress bar")
    s.set_defaults(run_command=_sample)
    r = commands.add_parser("restore", help="restore a degraded image with a trained model as the prior")
    r.add_argument("run", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint file")
    r.add_argument("--task", required=True, choices=sorted(TASKS),
                   help="deblur (Gaussian blur), sr (average-pooling super-resolution), inpaint (a box), grey "
                        "(colourise the mean of the channels)")
    r.add_argument("--input", required=True, help="the measurement as an image file: blurred, small, with the box "
                                                  "to fill, or grey (or the clean image with --degrade)")
    r.add_argument("-o", "--output", default="restored.png",
                   help="PNG to write: the pseudo-inverse of the measurement, then the restorations")
    r.add_argument("--degrade", action="store_true", help="--input is a clean image: measure it first (a demo)")
    r.add_argument("--sigma", type=float, default=2.0, help="deblur: the blur's standard deviation in pixels")
    r.add_argument("--factor", type=_positive, default=2, help="sr: the downsampling factor (default 2)")
    r.add_argument("--box", type=int, nargs=4, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"), default=None,
                   help="inpaint: the box to fill, in pixels (default: the centre half)")
    r.add_argument("--noise-std", type=float, default=QUANTISATION_STD,
                   help="measurement noise's standard deviation for images in [-1, 1] (default: 8-bit "
                        "quantisation, 2/255/sqrt(12) = 0.0023)")
    r.add_argument("--method", default="pigdm", choices=sorted(METHODS), help="restoration method (default pigdm)")
    r.add_argument("--sampler", default="ancestral", choices=sorted(SAMPLERS), help="sampler (default ancestral)")
    r.add_argument("--steps", type=_positive, default=100, help="network evaluations (default 100)")
    r.add_argument("-n", "--num-samples", type=_positive, default=1, help="restorations to draw (default 1)")
    r.add_argument("--seed", type=int, default=0, help="seed of the prior and the sampler's noise (default 0)")
    r.add_argument("--device", default="", help="device (default: cuda when available, else cpu)")
    r.add_argument("--progress", action="store_true", help="show a progress bar")
    r.set_defaults(run_command=_restore)
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (0, or 1 with a one-line ``error:`` message for a missing, damaged or unusable file)."""
    from .train.checkpoint import CheckpointError
    args = _parser().parse_args(argv)
    try:
        args.run_command(args)
    except (CheckpointError, ModelLoadError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
