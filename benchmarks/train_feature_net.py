"""Train the classifiers whose features lincorrupt's quality metrics use, and record their accuracy and sha256.

    .venv/bin/python benchmarks/train_feature_net.py --data fashion-mnist          # Debian's package
    .venv/bin/python benchmarks/train_feature_net.py --data cifar10 --root PATH    # cifar10-jpeg.zip or its folder

Seeded (weights, data order, augmentation), so a rerun on the same machine and torch build gives the
same file. Writes the state dict to ``lincorrupt/metrics/weights/`` (the file the package ships) and
the test accuracy, sha256, command and machine to ``benchmarks/feature_nets.json``.

Recipe: SGD with Nesterov momentum 0.9, one-cycle learning rate (peak 0.1), weight decay 5e-4,
label smoothing 0.1, batch 128; augmentation by random horizontal flips and random crops from a
2-pixel reflection padding. The network is :class:`lincorrupt.metrics.feature_nets.Classifier`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lincorrupt.data import load_fashion_mnist, to_model_range
from lincorrupt.metrics.feature_nets import FEATURE_NETS, Classifier, weights_path

HERE = Path(__file__).resolve().parent
RECORD = HERE / "feature_nets.json"
CIFAR_ZIP = HERE.parents[1] / "shared" / "data" / "cifar10-jpeg.zip"


def cifar10_jpeg(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and labels from ``split/<class>/*.jpg``, in a zip or a folder (classes sorted)."""
    from PIL import Image
    split = "train" if train else "test"
    if root.suffix == ".zip":
        with zipfile.ZipFile(root) as z:
            names = sorted(n for n in z.namelist() if n.startswith(f"{split}/") and n.endswith(".jpg"))
            read = lambda n: Image.open(io.BytesIO(z.read(n)))  # noqa: E731
            return _stack(names, read, lambda n: n.split("/")[1])
    names = sorted(str(p) for p in (root / split).glob("*/*.jpg"))
    return _stack(names, Image.open, lambda n: Path(n).parent.name)


def _stack(names, read, label_of) -> tuple[torch.Tensor, torch.Tensor]:
    if not names:
        raise FileNotFoundError("no images found: expected train/<class>/*.jpg and test/<class>/*.jpg")
    classes = sorted({label_of(n) for n in names})
    images = np.stack([np.asarray(read(n).convert("RGB")) for n in names])
    labels = [classes.index(label_of(n)) for n in names]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def load(data: str, root: str | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if data == "fashion-mnist":
        return load_fashion_mnist(train, root) if root else load_fashion_mnist(train)
    return cifar10_jpeg(Path(root) if root else CIFAR_ZIP, train)


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random horizontal flips and random crops of a reflection-padded batch (N, C, H, W)."""
    n, _, h, w = x.shape
    x = torch.where(torch.rand(n, generator=g)[:, None, None, None] < 0.5, x.flip(-1), x)
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    return x.gather(3, cols)


@torch.no_grad()
def accuracy(net: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    net.eval()
    correct = sum(int((net(to_model_range(images[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, choices=sorted(FEATURE_NETS))
    p.add_argument("--root", default=None, help="Fashion-MNIST idx folder (default: Debian's) or CIFAR-10 zip/folder")
    p.add_argument("--epochs", type=int, default=None, help="default: 8 (Fashion-MNIST), 10 (CIFAR-10)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=None, help="weights file (default: the packaged one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    epochs = args.epochs or {"fashion-mnist": 8, "cifar10": 10}[args.data]
    spec = FEATURE_NETS[args.data]
    x_train, y_train = load(args.data, args.root, True)
    x_test, y_test = load(args.data, args.root, False)
    print(f"{args.data}: {len(x_train)} training / {len(x_test)} test images {tuple(x_train.shape[1:])}", flush=True)

    net = Classifier(spec.shape, spec.widths)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = len(x_train) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for k in range(steps_per_epoch):
            idx = order[k * args.batch_size:(k + 1) * args.batch_size]
            x = augment(to_model_range(x_train[idx]), g)
            loss = F.cross_entropy(net(x), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        acc = accuracy(net, x_test, y_test)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}, test accuracy {acc:.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start

    out = Path(args.out) if args.out else weights_path(args.data)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    record = {"file": out.name, "sha256": sha, "test_accuracy": acc, "test_images": len(x_test), "epochs": epochs,
              "train_seconds": round(seconds), "parameters": sum(v.numel() for v in net.parameters()),
              "feature_dim": net.feature_dim, "seed": args.seed, "torch": torch.__version__,
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}",
              "command": "python benchmarks/train_feature_net.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(json.dumps(record, indent=2))
    if not args.out:
        records = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        records[args.data] = record
        RECORD.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    return record


if __name__ == "__main__":
    main()
