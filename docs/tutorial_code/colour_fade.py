"""Tutorial: define your own corruption — colour fades before shape.

A corruption none of the three papers has: blurring diffusion in an *opponent-colour* basis,
where the two chroma channels are blurred much faster than luminance, so a garment loses its
colour before it loses its shape. Run it (well under a minute on two CPU cores):

    .venv/bin/python docs/tutorial_code/colour_fade.py      # also writes colour_fade_reverse.png

tests/test_docs_tutorial.py runs this file as it is, so the tutorial page (which includes its
sections) cannot drift from working code.
"""

# --8<-- [start:basis]
import math

import torch

import lincorrupt as lc


class OpponentColourDCT(lc.Basis):
    """V^T x = DCT over (H, W) of an opponent-colour transform over the 3 channels.

    The colour matrix has orthonormal rows (luminance, red-green, yellow-blue), and the 2-D
    DCT is orthonormal, so their composition is an orthogonal basis of (3, H, W) images.
    """

    event_ndim = 3

    def __init__(self, height: int, width: int):
        super().__init__()
        colour = torch.tensor([[1.0, 1.0, 1.0],     # luminance
                               [1.0, -1.0, 0.0],    # red - green
                               [1.0, 1.0, -2.0]],   # yellow - blue
                              dtype=torch.float64)
        self.register_buffer("colour", colour / colour.norm(dim=1, keepdim=True))
        self.dct = lc.DCTBasis(height, width)

    def to_basis(self, x):    # (..., 3, H, W) -> (..., 3, H, W): colour mix, then DCT
        y = torch.einsum("dc,...chw->...dhw", self.colour.to(x.dtype), x)
        return self.dct.to_basis(y)

    def from_basis(self, u):  # the transpose, in reverse order
        y = self.dct.from_basis(u)
        return torch.einsum("dc,...dhw->...chw", self.colour.to(u.dtype), y)

    def check_event_shape(self, shape):
        if len(shape) != 3 or shape[0] != 3:
            raise ValueError(f"OpponentColourDCT acts on (3, H, W) images, got {shape}")
        self.dct.check_event_shape(shape)
# --8<-- [end:basis]


# --8<-- [start:corruption]
from lincorrupt.schedules import blur_tau, cosine_logsnr, vp_log_alpha_sigma


class ColourFadeDiffusion(lc.DiagonalizableCorruption):
    """Blurring diffusion with one blur strength for luminance and another for chroma.

    Per colour channel c and DCT frequency (k, l):
        alpha_t = a_t * d_t[c, k, l],   d_t = (1 - min_scale) exp(-lambda[k, l] tau_t[c]) + min_scale
        sigma_t = the VP cosine schedule, the same for every coordinate
    with tau_t[c] = (blur[c] sin^2(pi t / 2))^2 / 2 (blurring diffusion's blur schedule).
    """

    def __init__(self, shape, blur_luminance=2.0, blur_chroma=20.0, min_scale=1e-3):
        basis = OpponentColourDCT(shape[-2], shape[-1])
        super().__init__(shape, basis)
        self.min_scale = min_scale
        blur = torch.tensor([blur_luminance, blur_chroma, blur_chroma])
        self.register_buffer("blur", blur.view(3, 1, 1))                                   # (3, 1, 1)
        self.register_buffer("lam", basis.dct.frequencies_squared.float()[None])        # (1, H, W)

    def _log_alpha_sigma(self, t):
        t = t.view(-1, 1, 1, 1)                                                           # (B, 1, 1, 1)
        log_a, log_sigma = vp_log_alpha_sigma(cosine_logsnr(t))
        tau = blur_tau(t, 1.0) * self.blur.to(t.dtype) ** 2                              # (B, 3, 1, 1)
        d = (1 - self.min_scale) * torch.exp(-self.lam.to(t.dtype) * tau) + self.min_scale  # (B, 3, H, W)
        return log_a + d.log(), log_sigma
# --8<-- [end:corruption]


# --8<-- [start:invalid]
class ColourReturns(ColourFadeDiffusion):
    """A broken variant: the chroma blur peaks at t = 0.5 and then *un*-blurs."""

    def _log_alpha_sigma(self, t):
        t = t.view(-1, 1, 1, 1)
        log_a, log_sigma = vp_log_alpha_sigma(cosine_logsnr(t))
        tau = 0.5 * (self.blur.to(t.dtype) * torch.sin(math.pi * t) ** 2) ** 2
        d = (1 - self.min_scale) * torch.exp(-self.lam.to(t.dtype) * tau) + self.min_scale
        return log_a + d.log(), log_sigma


def show_refusal():
    try:
        ColourReturns(shape=(3, 28, 28))
    except lc.InvalidCorruptionError as err:
        print("refused:", err)
    else:
        raise AssertionError("an SNR that increases must be refused")
# --8<-- [end:invalid]


# --8<-- [start:data]
import gzip

import numpy as np


def colourful_fashion_mnist(n=512, root="/usr/share/datasets/fashion-mnist", seed=0):
    """n Fashion-MNIST training images, each tinted with a random colour: (n, 3, 28, 28) in [-1, 1]."""
    with gzip.open(f"{root}/train-images-idx3-ubyte.gz", "rb") as f:
        grey = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: n * 784].reshape(n, 1, 28, 28)
    g = torch.Generator().manual_seed(seed)
    tint = 0.3 + 0.7 * torch.rand(n, 3, 1, 1, generator=g)          # a bright random colour per image
    return 2 * (torch.from_numpy(grey / 255.0).float() * tint) - 1
# --8<-- [end:data]


# --8<-- [start:check]
def check(c, x):
    """What the base class gives a new corruption for free, checked on real images."""
    u = c.basis.to_basis(x)
    assert torch.allclose(c.basis.from_basis(u), x, atol=1e-5)                # V V^T = I
    assert torch.allclose(u.square().sum(), x.square().sum(), rtol=1e-4)      # orthogonal
    c.check_validity()   # already ran in __init__: SNR non-increasing in every coordinate

    t = torch.tensor([0.3])
    log_snr = c.log_snr(t)[0]            # (3, 28, 28): per colour channel and frequency
    print(f"log-SNR at t=0.3, lowest frequency: luminance {log_snr[0, 0, 0]:.2f}, "
          f"chroma {log_snr[1, 0, 0]:.2f}; highest: luminance {log_snr[0, -1, -1]:.2f}, "
          f"chroma {log_snr[1, -1, -1]:.2f}")

    z_t, eps = c.diffuse(x[:4], torch.full((4,), 0.5))          # forward process, data space
    post = c.posterior(z_t, x[:4], torch.full((4,), 0.4), torch.full((4,), 0.5))
    assert post.mean.shape == post.var.shape == x[:4].shape and bool((post.var > 0).all())
# --8<-- [end:check]


# --8<-- [start:train]
from lincorrupt.nn import UNet


def train(c, x, steps=40, batch_size=16, prediction="v", seed=0):
    """A few optimiser steps on the denoising loss; returns the model and its loss curve."""
    torch.manual_seed(seed)
    net = UNet(image_size=28, in_channels=3, ch=16, ch_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(), dropout=0.0, groups=8)          # a toy UNet: seconds on a CPU
    model = lc.DiffusionModel(net, c, prediction)                 # the prediction, fixed once for all calls
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = x[torch.randint(len(x), (batch_size,), generator=g)]
        loss = model.loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses
# --8<-- [end:train]


# --8<-- [start:sample]
def draw(model, n=8, steps=50, seed=0):
    """Ancestral sampling from the standard normal prior, in basis coordinates."""
    g = torch.Generator().manual_seed(seed)
    return model.sample(n, steps=steps, method="ancestral", grid="uniform", generator=g)  # lc.sample with its parts
# --8<-- [end:sample]


# --8<-- [start:snapshots]
def snapshots(model, n=8, steps=50, seed=0):
    """The reverse process as it runs: (t, x_hat) after every network evaluation, via the callback."""
    frames = []

    def keep(info):  # info: lc.StepInfo(step, t, z_t, x_hat), all in data space
        frames.append((float(info.t[0]), info.x_hat.clone()))

    g = torch.Generator().manual_seed(seed)
    model.sample(n, steps=steps, method="ancestral", grid="uniform", generator=g, callback=keep)
    return frames


def agreement(u, v):
    """Cosine similarity of two sets of basis coordinates: 1 when u already points where v does."""
    return float((u * v).sum() / (u.norm() * v.norm()))


def shape_first_colour_last(c, frames, every=10):
    """How much each snapshot's luminance detail and colour detail agree with the final sample's."""
    final = c.basis.to_basis(frames[-1][1])                       # (n, 3, 28, 28): luminance, 2 chroma
    detail = torch.ones(final.shape[-2:], dtype=torch.bool)
    detail[0, 0] = False                                          # every frequency but the mean colour
    rows = []
    for t, x_hat in frames[::every] + frames[-1:]:
        u = c.basis.to_basis(x_hat)
        rows.append((t, agreement(u[:, 0, detail], final[:, 0, detail]),
                     agreement(u[:, 1:, detail], final[:, 1:, detail])))
        print(f"t={t:.2f}: luminance detail {rows[-1][1]:.2f}, colour detail {rows[-1][2]:.2f}")
    return rows


def save_snapshots(frames, path, every=5):
    """The first two samples' x_hat every `every` evaluations, one row each, as a PNG."""
    from torchvision.utils import save_image
    picked = torch.stack([x_hat[:2] for _, x_hat in frames[::every] + frames[-1:]], 1)  # (2, frames, 3, 28, 28)
    save_image((picked.flatten(0, 1).clamp(-1, 1) + 1) / 2, path, nrow=picked.shape[1])
# --8<-- [end:snapshots]


# --8<-- [start:main]
def main(train_steps=40, sample_steps=50, snapshot_png=None):
    c = ColourFadeDiffusion(shape=(3, 28, 28))   # validity is checked here
    show_refusal()
    x = colourful_fashion_mnist()
    check(c, x)
    model, losses = train(c, x, steps=train_steps)
    print(f"v-loss: first 10 steps {np.mean(losses[:10]):.3f}, last 10 steps {np.mean(losses[-10:]):.3f}")
    samples = draw(model, steps=sample_steps)
    print(f"samples: shape {tuple(samples.shape)}, range [{samples.min():.2f}, {samples.max():.2f}]")
    frames = snapshots(model, steps=sample_steps)
    agreements = shape_first_colour_last(c, frames)
    if snapshot_png:
        save_snapshots(frames, snapshot_png)
    return c, x, losses, samples, frames, agreements


if __name__ == "__main__":
    main(snapshot_png="colour_fade_reverse.png")
# --8<-- [end:main]
