"""The ``lincorrupt`` command line: look into a trained model and sample from it.

    lincorrupt info runs/blurring                  # corruption, settings, prediction, step, parameters, recipe
    lincorrupt sample runs/blurring -n 64 -o grid.png                  # the corruption's fast sampler, 20 steps
    lincorrupt sample runs/blurring -n 50000 -o samples/ --method ancestral --steps 100   # one PNG per image
    lincorrupt sample runs/conditional -n 100 --labels 3 --guidance 2   # a class-conditional model: class 3
    lincorrupt restore runs/blurring --task deblur --sigma 2 --input blurred.png -o restored.png

RUN_OR_CKPT is a run folder (its ``checkpoint.pt``), a Trainer checkpoint or a file of
:meth:`lincorrupt.DiffusionModel.save`; :func:`lincorrupt.load` reads it (EMA weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from . import operators
from .model import DiffusionModel, ModelLoadError, load
from .restoration import METHODS
from .sampling import GRIDS, SAMPLERS

__all__ = ["main", "describe", "positive_int"]


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
    """Sample ``-n`` images in batches of ``--batch-size`` and write each batch as it is done: into one grid
    image, or one PNG per image in a folder. Every argument is checked before the model is loaded."""
    from tqdm import tqdm

    out = _Output(args.output)
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check_device(device)
    model = load(args.run, map_location=device)
    out.check(args.num_samples, model.corruption.shape)
    settings = {**model.sampling_defaults(), **{k: v for k, v in (("method", args.method), ("grid", args.grid),
                                                                   ("steps", args.steps)) if v is not None}}
    conditioning = _conditioning(model, args)
    generator = torch.Generator(device).manual_seed(args.seed)
    fitted = model.fitted_grid(settings["method"], settings["steps"]) if args.grid is None else None
    if fitted is not None:
        settings["grid"] = fitted
        print(f"using the grid fitted for {settings['method']} with {settings['steps']} steps, stored with the model")
    grid_name = "fitted" if fitted is not None else settings["grid"]
    batches = range(0, args.num_samples, args.batch_size)
    with tqdm(total=len(batches) * settings["steps"], desc=f"sampling {args.num_samples} images", unit="eval",
              disable=not args.progress) as bar:
        for start in batches:
            count = min(args.batch_size, args.num_samples - start)
            x = model.sample(count, generator=generator, callback=lambda _: bar.update(), **settings,
                             **conditioning(start, count))
            out.add(_to_uint8(x))
    out.close()
    print(f"{args.num_samples} samples ({settings['method']}, {settings['steps']} steps, {grid_name} grid, "
          f"step {model.info.get('step', '?')} of {model.info['path']}) -> {out.path}")


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Samples (B, C, H, W) in [-1, 1] as 8-bit images on the CPU (as torchvision's ``save_image`` rounds them)."""
    from .data.images import to_unit_range
    return to_unit_range(x.float().cpu()).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


#: File extensions ``-o`` writes a grid to (PIL's writers).
GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: The widest and tallest grid ``-o FILE`` writes, in pixels (8192 x 8192 RGB is 200 MB, held in memory until
#: written); more images go to a folder, one PNG each.
MAX_GRID_SIDE = 8192


class _Output:
    """Where ``lincorrupt sample -o`` writes: a grid image (``grid.png``; the batches are kept as 8-bit images and
    written at the end) or a folder named with a trailing ``/`` (one PNG per image, ``000000.png`` ..., each batch
    written as it is done). The path is checked when constructed, the count against the image shape in
    :meth:`check`: both before any sampling.

    Raises:
        ValueError: an extension that is not an image's, no extension and no trailing ``/``, a parent that is a
            file, a folder that holds PNGs already, a grid too large or a disk too small for the images.
    """

    def __init__(self, text: str):
        self.path = Path(text)
        self.folder = text.endswith(("/", os.sep))
        self.images: list[torch.Tensor] = []
        self.written = 0
        if self.path.is_dir() and not self.folder:
            raise ValueError(f"-o {text} is a folder: name a grid image inside it, or write {text}/ for one PNG "
                             f"per image")
        if not self.folder and self.path.suffix.lower() not in GRID_SUFFIXES:
            what = f"extension {self.path.suffix!r}" if self.path.suffix else "no extension"
            raise ValueError(f"-o {text}: {what}; expected a grid image ({', '.join(GRID_SUFFIXES)}) or a folder "
                             f"ending in / (e.g. samples/) for one PNG per image")
        existing = next(p for p in self.path.parents if p.exists())  # "." for a relative path at worst
        if not existing.is_dir():
            raise ValueError(f"-o {text}: {existing} is a file, not a folder")
        if self.folder and self.path.exists() and not self.path.is_dir():
            raise ValueError(f"-o {text}: {self.path} is a file; a trailing / asks for a folder of PNGs")
        if not os.access(existing, os.W_OK):
            raise ValueError(f"-o {text}: cannot write into {existing}")
        self._existing = existing

    def check(self, n: int, shape: tuple[int, ...]) -> None:
        """Refuse ``n`` images of ``shape`` (C, H, W) that the output cannot hold cleanly."""
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"the model's images have shape {tuple(shape)}; -o writes images of 1 or 3 channels")
        per_row = math.ceil(math.sqrt(n))
        height, width = (math.ceil(n / per_row) * (shape[1] + 2) + 2, per_row * (shape[2] + 2) + 2)
        if not self.folder and max(height, width) > MAX_GRID_SIDE:
            raise ValueError(f"a grid of {n} images of {shape[1]}x{shape[2]} would be {width}x{height} pixels (at most "
                             f"{MAX_GRID_SIDE} a side): write one PNG per image with -o FOLDER/ (e.g. "
                             f"-o {self.path.with_suffix('')}/)")
        if self.folder and self.path.is_dir() and any(self.path.glob("*.png")):
            raise ValueError(f"-o {self.path}/ holds PNG files already: the numbered images would mix with them; "
                             f"name an empty or new folder")
        need, free = n * (math.prod(shape) + 256), shutil.disk_usage(self._existing).free  # pixels + PNG overhead
        if need > free:
            raise ValueError(f"{n} images of {'x'.join(map(str, shape))} need about {need / 1e9:.3g} GB and "
                             f"{self._existing} has {free / 1e9:.3g} GB free: ask for fewer with -n")
        self.n = n

    def add(self, images: torch.Tensor) -> None:
        """Take a batch of 8-bit images (B, C, H, W): written at once to a folder, kept for a grid."""
        if not self.folder:
            self.images.append(images)
            return
        from PIL import Image
        self.path.mkdir(parents=True, exist_ok=True)
        digits = max(6, len(str(self.n - 1)))
        for image in images.permute(0, 2, 3, 1).numpy():
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
                self.path / f"{self.written:0{digits}d}.png")
            self.written += 1

    def close(self) -> None:
        """Write the grid (``ceil(sqrt(N))`` images a row, 2 pixels of padding), or nothing more for a folder."""
        if self.folder:
            return
        from PIL import Image
        from torchvision.utils import make_grid
        images = torch.cat(self.images)
        grid = make_grid(images, nrow=math.ceil(math.sqrt(len(images))), padding=2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(self.path)


def _check_device(device: torch.device) -> None:
    """Refuse a device this machine does not have (``cuda:0`` without a GPU), in one line."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--device {device} is not available here ({reason}); leave --device out to use "
                         f"{'cuda' if torch.cuda.is_available() else 'cpu'}") from None


def _conditioning(model: DiffusionModel, args) -> Callable[[int, int], dict]:
    """``labels`` and ``guidance`` of a class-conditional model for images ``start`` to ``start + count``:
    ``--labels`` repeated over the images (default: the classes in turn, one per image); nothing for an
    unconditional one.

    Raises:
        ValueError: ``--labels`` or ``--guidance`` for an unconditional model.
    """
    if model.num_classes is None:
        if args.labels is not None or args.guidance != 1:
            raise ValueError(f"{model.info['path']} is an unconditional model: --labels and --guidance need a "
                             f"class-conditional one (trained with labels, num_classes in `lincorrupt info`)")
        return lambda start, count: {}
    classes = torch.tensor(args.labels if args.labels is not None else range(model.num_classes))
    return lambda start, count: {"labels": classes[torch.arange(start, start + count) % len(classes)],
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
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check_device(device)
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
    s = commands.add_parser("sample", help="sample images from a trained model (EMA weights) into a grid or a folder",
                            description="Sample images from a trained model (EMA weights). Without --method, --grid "
                                        "and --steps: the corruption's fast sampler, 20 network evaluations (for "
                                        "blurring diffusion dpm++3m on the data grid); for the best quality the "
                                        "Results page measured --method ancestral --grid uniform --steps 100.")
    s.add_argument("run", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint file")
    s.add_argument("-n", "--num-samples", type=positive_int, default=64, help="number of images (default 64)")
    s.add_argument("-o", "--output", default="samples.png",
                   help="an image file (.png, .jpg, ...) for one grid of all images, at most 8192 pixels a side "
                        "(default samples.png); or a folder written with a trailing / (e.g. samples/) for one PNG "
                        "per image, 000000.png, 000001.png, ..., each batch written as it is done (many images, "
                        "FID tools)")
    s.add_argument("--batch-size", type=positive_int, default=256,
                   help="images sampled at once (default 256; memory grows with it; the same --seed and "
                        "--batch-size give the same images)")
    s.add_argument("--method", default=None, choices=sorted(SAMPLERS),
                   help="sampler (default: the corruption's fast sampler, `fast_sampling`)")
    s.add_argument("--grid", default=None, choices=sorted(GRIDS),
                   help="time grid (default: the grid fitted for the sampler and --steps if the model holds one, "
                        "else the fast sampler's)")
    s.add_argument("--steps", type=positive_int, default=None,
                   help="network evaluations (default: the fast sampler's, 20)")
    s.add_argument("--seed", type=int, default=0, help="seed of the prior and the sampler's noise (default 0)")
    s.add_argument("--labels", type=_labels, default=None,
                   help="class-conditional models: class indices, repeated over the images (-1: unconditional; "
                        "default: the classes in turn)")
    s.add_argument("--guidance", type=_finite_float, default=1.0,
                   help="class-conditional models: classifier-free guidance scale (1: the conditional model)")
    s.add_argument("--device", type=_device, default=None, help="device (default: cuda when available, else cpu)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="a progress bar on stderr (default on; --no-progress turns it off)")
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
    r.add_argument("--factor", type=positive_int, default=2, help="sr: the downsampling factor (default 2)")
    r.add_argument("--box", type=int, nargs=4, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"), default=None,
                   help="inpaint: the box to fill, in pixels (default: the centre half)")
    r.add_argument("--noise-std", type=float, default=QUANTISATION_STD,
                   help="measurement noise's standard deviation for images in [-1, 1] (default: 8-bit "
                        "quantisation, 2/255/sqrt(12) = 0.0023)")
    r.add_argument("--method", default="pigdm", choices=sorted(METHODS), help="restoration method (default pigdm)")
    r.add_argument("--sampler", default="ancestral", choices=sorted(SAMPLERS), help="sampler (default ancestral)")
    r.add_argument("--steps", type=positive_int, default=100, help="network evaluations (default 100)")
    r.add_argument("-n", "--num-samples", type=positive_int, default=1, help="restorations to draw (default 1)")
    r.add_argument("--seed", type=int, default=0, help="seed of the prior and the sampler's noise (default 0)")
    r.add_argument("--device", type=_device, default=None, help="device (default: cuda when available, else cpu)")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="a progress bar on stderr (default on; --no-progress turns it off)")
    r.set_defaults(run_command=_restore)
    for command in (info, s, r):
        command.add_argument("--threads", type=_at_least_0, default=1, help="torch CPU threads (default 1: on a "
                             "shared machine more threads ran several times slower; 0: torch's default, one per core)")
    return p


def _integer(text: str, least: int, what: str) -> int:
    """``text`` as an int of at least ``least``, else an ``ArgumentTypeError`` saying ``what`` was expected."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argument that must be a positive integer (argparse ``type=``)."""
    return _integer(text, 1, "a positive integer")


def _at_least_0(text: str) -> int:
    return _integer(text, 0, "0 or a positive integer")


def _finite_float(text: str) -> float:
    """An argument that must be a finite number (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _device(text: str) -> str:
    """An argument that must name a torch device (cpu, cuda, cuda:1, mps, ...); whether this machine has it is
    checked before the model loads."""
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1, got {text!r}") from None
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (0, or 1 with a one-line ``error:`` message for a missing, damaged or unusable file; 130 after Ctrl-C)."""
    from .train.checkpoint import CheckpointError
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.run_command(args)
    except (CheckpointError, ModelLoadError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the images of the batches written so far stay
        print("interrupted", file=sys.stderr)
        return 130
    return 0
