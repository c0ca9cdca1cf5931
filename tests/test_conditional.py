"""Class-conditional models and classifier-free guidance: the combination, the null label, training with labels."""

import math

import pytest
import torch

import lincorrupt as lc
from helpers.corruptions import CORRUPTIONS
from lincorrupt.data import ImageFolder, TensorImages
from lincorrupt.nn import UNet
from lincorrupt.sampling import guided
from lincorrupt.train import TrainConfig, Trainer

SHAPE = (1, 8, 8)
f64 = torch.float64


def tiny_unet(num_classes=3, **kw):
    torch.manual_seed(0)
    return UNet(image_size=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), groups=4,
                num_classes=num_classes, **kw)


class KnownOutputs:
    """A conditional model whose outputs are written out: one affine map of z_t per label, the null label's own.
    It records every batch of labels it sees."""

    num_classes = 3

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.scale = torch.rand(self.num_classes + 1, generator=g, dtype=f64) + 0.5  # row 0: label -1
        self.shift = torch.randn(self.num_classes + 1, *SHAPE, generator=g, dtype=f64)
        self.seen = []

    def __call__(self, z_t, t, y):
        self.seen.append(y.clone())
        k = (y + 1).long()
        return 0.3 * self.scale[k].view(-1, 1, 1, 1) * z_t * (1 + t.view(-1, 1, 1, 1)) + self.shift[k]


# ----------------------------------------------------------------- the combination
@pytest.mark.parametrize("s", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("prediction", ["eps", "x", "v"])
def test_every_x_hat_is_the_guidance_combination_of_the_conditional_and_null_outputs(s, prediction):
    """At every step, x_hat equals the one converted from out(-1) + s (out(y) - out(-1)), written out here."""
    c = lc.DDPM(SHAPE, schedule="cosine")
    model, labels = KnownOutputs(), torch.tensor([0, 2, -1, 1])
    seen = []
    lc.sample(model, c, 4, steps=5, prediction=prediction, labels=labels, guidance=s, dtype=f64,
              generator=torch.Generator().manual_seed(1), callback=seen.append)
    for info in seen:
        conditional, null = model(info.z_t, info.t, labels), model(info.z_t, info.t, torch.full((4,), -1))
        combined = null + s * (conditional - null)
        expected = c.convert(combined, info.z_t, info.t, prediction, "x")
        torch.testing.assert_close(info.x_hat, expected)
    assert len(seen) == 5


def test_both_halves_come_from_one_network_call_of_twice_the_batch():
    model, labels = KnownOutputs(), torch.tensor([0, 1, 2])
    lc.sample(model, lc.DDPM(SHAPE), 3, steps=4, labels=labels, guidance=3.0, dtype=f64)
    assert len(model.seen) == 4 and all(y.tolist() == [0, 1, 2, -1, -1, -1] for y in model.seen)
    model.seen.clear()
    lc.sample(model, lc.DDPM(SHAPE), 3, steps=4, labels=labels, guidance=1.0, dtype=f64)
    assert all(y.tolist() == [0, 1, 2] for y in model.seen)  # s = 1: the conditional model alone


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_guidance_one_is_plain_conditional_sampling(name):
    c = CORRUPTIONS[name]()
    model = lambda z, t, y: torch.tanh(z) * (y.view(-1, *[1] * (z.ndim - 1)) + 2) / 4
    labels = torch.arange(4) % 3
    plain = lc.sample(lambda z, t: model(z, t, labels), c, 4, steps=6, method="dpm++2m", dtype=f64,
                      generator=torch.Generator().manual_seed(2))
    with_labels = lc.sample(model, c, 4, steps=6, method="dpm++2m", dtype=f64, labels=labels,
                            generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(with_labels, plain, rtol=0, atol=0)


def test_mixing_in_eps_x_or_v_space_gives_the_same_x_hat():
    """The conversions are affine with weights summing to one, so the combination commutes with them."""
    c = lc.BlurringDiffusion(SHAPE)
    z_t = torch.randn(4, *SHAPE, dtype=f64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=f64)
    out_y = torch.randn(4, *SHAPE, dtype=f64, generator=torch.Generator().manual_seed(4))
    out_null = torch.randn(4, *SHAPE, dtype=f64, generator=torch.Generator().manual_seed(5))
    s = 4.0
    for kind in ("eps", "v"):
        mixed_then_converted = c.convert(out_null + s * (out_y - out_null), z_t, t, kind, "x")
        x_y, x_null = (c.convert(o, z_t, t, kind, "x") for o in (out_y, out_null))
        torch.testing.assert_close(mixed_then_converted, x_null + s * (x_y - x_null))


def test_a_two_argument_model_samples_as_before_and_guidance_needs_labels():
    c = lc.DDPM(SHAPE)
    model = lambda z, t: 0.5 * z
    x = lc.sample(model, c, 2, steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, *SHAPE)
    with pytest.raises(ValueError, match="needs labels"):
        lc.sample(model, c, 2, steps=3, guidance=2.0)


@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([0, 1, 2]), ValueError, r"shape \(4,\)"),
    (torch.tensor([0, 1, 2, 3]), ValueError, r"-1 \.\. 2"),
    (torch.tensor([0, 1, -2, 0]), ValueError, r"-1 \.\. 2"),
    (torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError, "integer"),
    (torch.tensor([True, False, True, False]), TypeError, "integer"),
])
def test_bad_labels_are_refused_where_they_enter(labels, error, match):
    with pytest.raises(error, match=match):
        lc.sample(KnownOutputs(), lc.DDPM(SHAPE), 4, steps=2, labels=labels, guidance=2.0)


@pytest.mark.parametrize("guidance", [math.nan, math.inf, "2"])
def test_a_guidance_scale_that_is_not_a_finite_number_is_refused(guidance):
    with pytest.raises((TypeError, ValueError), match="guidance"):
        lc.sample(KnownOutputs(), lc.DDPM(SHAPE), 2, steps=2, labels=[0, 1], guidance=guidance)


def test_guided_refuses_a_batch_of_another_length():
    with pytest.raises(ValueError, match="2 labels for a batch of 3"):
        guided(KnownOutputs(), torch.tensor([0, 1]), 2.0)(torch.zeros(3, *SHAPE, dtype=f64), torch.zeros(3))


# ----------------------------------------------------------------- the network
def test_the_unet_adds_a_learned_embedding_per_label_and_one_for_the_null_label():
    unet = tiny_unet(3).eval()
    assert unet.label_emb.num_embeddings == 4 and unet.config["num_classes"] == 3
    z, t = torch.randn(4, *SHAPE), torch.full((4,), 0.5)
    with torch.no_grad():
        for p in unet.parameters():  # the zero-initialised last layers: make the output depend on the embedding
            if not p.any():
                p.normal_(0, 0.3)
        outs = [unet(z, t, torch.full((4,), y)) for y in (-1, 0, 1, 2)]
        for a in range(4):
            for b in range(a + 1, 4):
                assert not torch.allclose(outs[a], outs[b])
        unet.label_emb.weight[0] = unet.label_emb.weight[2]  # the null row set to label 1's: the same output
        torch.testing.assert_close(unet(z, t, torch.full((4,), -1)), unet(z, t, torch.full((4,), 1)))


def test_the_unet_says_how_to_call_it():
    z, t = torch.randn(2, *SHAPE), torch.rand(2)
    with pytest.raises(TypeError, match="conditional"):
        tiny_unet(3)(z, t)
    with pytest.raises(TypeError, match="unconditional"):
        tiny_unet(None)(z, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        tiny_unet(0)


# ----------------------------------------------------------------- training
def labelled_images(n=40, classes=3):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g), torch.arange(n) % classes


def conditional_trainer(tmp_path, steps=4, **kw):
    images, labels = labelled_images()
    cfg = TrainConfig(**{**dict(steps=steps, batch_size=8, warmup_steps=1, ema_decay=0.9, num_workers=0,
                                log_every=2, sample_every=0, ckpt_every=0, progress=False, out_dir=str(tmp_path),
                                hflip=False), **kw})
    return Trainer(tiny_unet(3), lc.BlurringDiffusion(SHAPE), TensorImages(images, SHAPE, labels=labels), cfg)


def test_the_loss_calls_the_network_with_the_labels():
    c, x = lc.DDPM(SHAPE), torch.rand(4, *SHAPE) * 2 - 1
    seen = []
    lc.diffusion_loss(lambda z, t, y: seen.append(y) or 0 * z, c, x, y=torch.tensor([2, 0, -1, 1]))
    assert seen[0].tolist() == [2, 0, -1, 1]
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        lc.diffusion_loss(lambda z, t, y: 0 * z, c, x, y=torch.tensor([0, 1]))


def test_label_dropout_replaces_that_share_of_labels_by_the_null_label(tmp_path):
    trainer = conditional_trainer(tmp_path, batch_size=256, label_dropout=0.25)
    drops = torch.cat([trainer.draw(step, 0, 256)[3] for step in range(40)])  # 10,240 labels
    # binomial: mean 0.25, standard deviation sqrt(0.25 * 0.75 / 10240) = 0.0043; 5 of them either side
    assert abs(drops.float().mean().item() - 0.25) < 0.0215
    unconditional = Trainer(UNet(image_size=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                 attn_resolutions=(), groups=4), lc.DDPM(SHAPE),
                            TensorImages(*labelled_images()[:1], SHAPE), trainer.cfg)
    assert not unconditional.draw(0, 0, 256)[3].any()
    # the other draws are those of an unconditional run: adding labels changes neither t, nor the noise, nor flips
    for a, b in zip(trainer.draw(7, 0, 256)[:3], unconditional.draw(7, 0, 256)[:3]):
        assert torch.equal(a, b)


def test_the_trainer_feeds_the_labels_with_dropout(tmp_path):
    trainer = conditional_trainer(tmp_path, label_dropout=0.5)
    seen = []
    net = trainer.net
    trainer.net = lambda z, t, y: seen.append(y.clone()) or net(z, t, y)
    images, labels = next(trainer.batches())
    trainer.train_step((images, labels))
    drop = trainer.draw(0, 0, 8)[3]
    assert torch.equal(seen[0], torch.where(drop, -1, labels)) and 0 < int(drop.sum()) < 8


def test_a_conditional_model_without_labels_in_its_data_is_refused(tmp_path):
    images, _ = labelled_images()
    with pytest.raises(ValueError, match=r"\(image, label\) pairs"):
        Trainer(tiny_unet(3), lc.DDPM(SHAPE), TensorImages(images, SHAPE), TrainConfig(out_dir=str(tmp_path)))


def test_a_trained_conditional_model_round_trips_through_its_checkpoint(tmp_path):
    trainer = conditional_trainer(tmp_path)
    assert trainer.fit() == "done"
    model = lc.load(tmp_path)
    assert model.num_classes == 3 and model.network.config["num_classes"] == 3
    for a, b in zip(model.network.state_dict().values(), trainer.ema.module.state_dict().values()):
        torch.testing.assert_close(a, b)
    g = lambda: torch.Generator().manual_seed(0)
    x = model.sample(4, steps=3, method="ancestral", grid="uniform", labels=torch.tensor([0, 1, 2, -1]), guidance=2.0,
                     generator=g())
    with torch.no_grad():
        y = lc.sample(trainer.ema.module.eval(), trainer.corruption, 4, steps=3, labels=torch.tensor([0, 1, 2, -1]),
                      guidance=2.0, generator=g())
    torch.testing.assert_close(x, y)
    grid = trainer.sample_grid(tmp_path / "grid.png", n=6, steps=2)
    assert grid.shape == (6, *SHAPE)


def test_an_image_folder_labels_its_images_by_class_subfolder(tmp_path):
    from PIL import Image
    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("L", (8, 8), color=40 * k + i).save(tmp_path / name / f"{i}.png")
    ds = ImageFolder(tmp_path, SHAPE, labels=True)
    assert ds.classes == ["cat", "dog"] and [int(ds[i][1]) for i in range(4)] == [0, 0, 1, 1]
    assert ds.num_classes == 2
    plain = ImageFolder(tmp_path, SHAPE)
    assert isinstance(plain[0], torch.Tensor) and plain.num_classes is None


def test_labelled_tensor_images_know_their_number_of_classes():
    images = torch.zeros(4, *SHAPE, dtype=torch.uint8)
    assert TensorImages(images, SHAPE, labels=torch.tensor([0, 2, 1, 2])).num_classes == 3
    assert TensorImages(images, SHAPE, labels=torch.tensor([0, 0, 1, 1]), num_classes=10).num_classes == 10
    assert TensorImages(images, SHAPE).num_classes is None
    with pytest.raises(ValueError, match=r"in -1 \.\. 1"):
        TensorImages(images, SHAPE, labels=torch.tensor([0, 2, 1, 2]), num_classes=2)


def test_the_command_line_samples_a_conditional_model_by_class_at_a_guidance_scale(tmp_path, capsys, monkeypatch):
    import json

    from lincorrupt import commands
    trainer = conditional_trainer(tmp_path / "run")
    assert trainer.fit() == "done"
    assert commands.main(["info", str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 3
    seen = {}
    real = lc.DiffusionModel.sample
    monkeypatch.setattr(lc.DiffusionModel, "sample", lambda self, n, **kw: seen.update(kw) or real(self, n, **kw))
    grid = str(tmp_path / "grid.png")
    assert commands.main(["sample", str(tmp_path / "run"), "-n", "5", "-o", grid, "--steps", "2",
                          "--labels", "2,-1", "--guidance", "3"]) == 0
    assert seen["labels"].tolist() == [2, -1, 2, -1, 2] and seen["guidance"] == 3
    assert commands.main(["sample", str(tmp_path / "run"), "-n", "4", "-o", grid, "--steps", "2"]) == 0
    assert seen["labels"].tolist() == [0, 1, 2, 0] and seen["guidance"] == 1  # the classes in turn
    assert commands.main(["sample", str(tmp_path / "run"), "-n", "4", "-o", grid, "--steps", "2",
                          "--labels", "3"]) == 1
    assert "in -1 .. 2" in capsys.readouterr().err


def test_the_command_line_refuses_labels_for_an_unconditional_model(tmp_path, capsys):
    from lincorrupt import commands
    lc.DiffusionModel(tiny_unet(None), lc.DDPM(SHAPE), "v").save(tmp_path / "model.pt")
    assert commands.main(["sample", str(tmp_path / "model.pt"), "-o", str(tmp_path / "g.png"), "--guidance", "2"]) == 1
    assert "unconditional model: --labels and --guidance" in capsys.readouterr().err


@pytest.mark.parametrize("declared", [None, 5])
def test_a_dataset_with_more_classes_than_the_network_is_refused_before_training(tmp_path, declared):
    images, _ = labelled_images()
    labels = torch.arange(len(images)) % 4  # label 3 comes in a late batch, if ever
    data = TensorImages(images, SHAPE, labels=labels, num_classes=declared)
    with pytest.raises(ValueError, match=rf"{declared or 4} classes .*num_classes=3"):
        Trainer(tiny_unet(3), lc.DDPM(SHAPE), data, TrainConfig(out_dir=str(tmp_path)))
    assert Trainer(tiny_unet(declared or 4), lc.DDPM(SHAPE), data, TrainConfig(out_dir=str(tmp_path))).num_classes
