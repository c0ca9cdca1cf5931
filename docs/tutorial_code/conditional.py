"""Class-conditional models and guidance: train on Fashion-MNIST's labels, sample classes at a guidance scale.

    .venv/bin/python docs/tutorial_code/conditional.py      # writes runs/conditional/

Included in docs/how-to/conditional.md; tests/test_docs_tutorial.py runs it with a few steps.
"""
# --8<-- [start:train]
import torch

import lincorrupt as lc
from lincorrupt.data import TensorImages, load_fashion_mnist
from lincorrupt.metrics import label_accuracy, load_feature_net
from lincorrupt.nn import UNet
from lincorrupt.train import TrainConfig, Trainer, init_distributed


def train(out_dir="runs/conditional", steps=1500, train_images=60_000):
    images, labels = load_fashion_mnist(train=True)     # uint8 (N, 1, 28, 28), int64 (N,) in 0..9
    shape = (1, 28, 28)
    data = TensorImages(images[:train_images], shape, labels=labels[:train_images])  # items: (image, label)
    c = lc.BlurringDiffusion(shape=shape, sigma_blur_max=17.5)
    net = UNet(image_size=28, in_channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
               dropout=0.0, groups=8, num_classes=10)         # + a learned embedding per class and one for -1
    config = TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup_steps=100, hflip=False, sample_every=0,
                         ckpt_every=500, label_dropout=0.1, out_dir=out_dir)  # 10% of the labels become -1
    trainer = Trainer(net, c, data, config, dist=init_distributed())
    trainer.fit()
    return lc.load(out_dir, map_location=trainer.device)             # .num_classes == 10
# --8<-- [end:train]


# --8<-- [start:sample]
def sample_classes(model, guidance=3.0, per_class=10):
    labels = torch.arange(10 * per_class) % 10                        # 0, 1, ..., 9, 0, 1, ...
    g = torch.Generator().manual_seed(0)
    x = model.sample(len(labels), labels=labels, guidance=guidance,  # s = 1: the conditional model alone
                     steps=20, method="dpm++3m", grid="logsnr", generator=g).clamp(-1, 1)
    accuracy = label_accuracy(load_feature_net("fashion-mnist"), x, labels)  # share classified as asked
    print(f"guidance {guidance:g}: label accuracy {accuracy:.2f}")
    return x, accuracy
# --8<-- [end:sample]


if __name__ == "__main__":
    sample_classes(train())
