"""The ``lincorrupt`` command line: look into a trained model and sample from it.

    lincorrupt info runs/blurring                  # corruption, settings, prediction, step, parameters, recipe
    lincorrupt sample runs/blurring -n 64 -o grid.png --method dpm++2m --grid logsnr --steps 50 --seed 0
    lincorrupt sample runs/conditional -n 100 --labels 3 --guidance 2   # a class-conditional model: class 3

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

from .model import DiffusionModel, ModelLoadError, load
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
    fitted = model.fitted_grid(args.method, args.steps) if args.grid is None else None
    grid = fitted if fitted is not None else args.grid or "uniform"
    if fitted is not None:
        print(f"using the grid fitted for {args.method} with {args.steps} steps, stored with the model")
    x = model.sample(args.num_samples, steps=args.steps, method=args.method, grid=grid, generator=generator,
                     progress=args.progress, **_conditioning(model, args))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_unit_range(x.float().cpu()), out, nrow=int(math.ceil(math.sqrt(args.num_samples))))
    name = "fitted" if fitted is not None else grid
    print(f"{args.num_samples} samples ({args.method}, {args.steps} steps, {name} grid, step "
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
    s.add_argument("--grid", default=None, choices=sorted(GRIDS),
                   help="time grid (default: the grid fitted for --method and --steps if the model holds one, "
                        "else uniform)")
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
