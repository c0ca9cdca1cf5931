"""A trained model as one object: recorded constructor arguments, DiffusionModel, lc.load and save."""

import math

import pytest
import torch

import lincorrupt as lc
from helpers.corruptions import CORRUPTIONS
from helpers.training import make_trainer
from lincorrupt.config import Configurable, SpecError, build_module, module_spec
from lincorrupt.model import ModelLoadError
from lincorrupt.nn import UNet
from lincorrupt.train import CheckpointError, save_checkpoint

TINY_UNET = dict(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), groups=4)


def tiny_unet(**kw):
    torch.manual_seed(0)
    return UNet(**{**TINY_UNET, **kw})


def coefficients(c):
    return c.coefficients(torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64))


# ----------------------------------------------------------------- recorded arguments
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_records_its_arguments_and_rebuilds_from_them(name):
    c = CORRUPTIONS[name]()
    rebuilt = type(c)(**c.config)
    assert rebuilt.config == c.config and rebuilt.shape == c.shape
    a, b = coefficients(c), coefficients(rebuilt)
    assert torch.equal(a.log_alpha, b.log_alpha) and torch.equal(a.log_sigma, b.log_sigma)


def test_config_holds_defaults_and_the_given_values_by_name():
    c = lc.BlurringDiffusion((1, 4, 6), 5.0, min_scale=0.1)
    assert c.config == {"shape": (1, 4, 6), "sigma_blur_max": 5.0, "min_scale": 0.1, "logsnr_min": -10.0,
                        "logsnr_max": 10.0, "prior": None, "basis": None}
    net = tiny_unet(dropout=0.0)
    assert net.config["ch"] == 8 and net.config["dropout"] == 0.0 and net.config["time_scale"] == 1000.0
    assert UNet(**net.config).config == net.config


class Fade(lc.DiagonalizableCorruption):
    """A subclass written without any mention of config: it records its arguments by inheritance."""

    def __init__(self, shape, rate: float = 2.0, **extra):
        super().__init__(shape, lc.IdentityBasis())
        self.rate = rate

    def _log_alpha_sigma(self, t):
        t = t.view(-1, *[1] * len(self.shape))
        return -self.rate * t, 0.5 * torch.log1p(-torch.exp(-2 * self.rate * t)).clamp(min=-30)


def test_a_new_subclass_records_for_free_and_still_runs_its_validity_check():
    c = Fade((2, 3), rate=3.0, note="kept")
    assert c.config == {"shape": (2, 3), "rate": 3.0, "note": "kept"}
    with pytest.raises(lc.InvalidCorruptionError):
        Fade((2, 3), rate=-1.0)  # alpha grows: SNR increases, refused after the outermost __init__


def test_positional_varargs_cannot_be_recorded_and_saving_says_so():
    class Varargs(Configurable):
        def __init__(self, *sizes):
            super().__init__()

    assert Varargs().config == {}
    built = Varargs(1, 2)  # still builds, but cannot be saved
    assert built.config is None
    with pytest.raises(SpecError, match="positional"):
        module_spec(built)


def test_spec_refuses_an_unrecorded_module_and_an_unknown_class():
    with pytest.raises(SpecError, match="does not record"):
        module_spec(torch.nn.Linear(2, 2))
    with pytest.raises(SpecError, match="not defined in this process"):
        build_module({"class": "nowhere.Missing", "config": {}})


def test_a_checkpoint_holds_the_model_entry_only_when_both_modules_record_their_arguments():
    from lincorrupt.model import model_entry, model_record

    net, corruption = UNet(image_size=8, in_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                           groups=4), lc.DDPM((1, 8, 8))
    entry = model_entry(net, corruption, "v")
    assert entry.keys() == {"diffusion_model"} and entry["diffusion_model"]["prediction"] == "v"
    assert entry["diffusion_model"]["network"] == model_record(net, corruption, "v")["network"]
    assert model_entry(torch.nn.Conv2d(1, 1, 1), corruption, "v") == {}  # any network trains; it just cannot load


# ----------------------------------------------------------------- fitted buffers travel
def test_a_fitted_empirical_prior_travels_in_the_state_dict_and_is_saved_once():
    c = lc.IHDM((3, 8, 8), num_steps=20)
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    c.prior = lc.EmpiricalPrior.fit(c, images)
    state = c.state_dict()
    spec = module_spec(c, state)
    assert spec["config"]["prior"]["module"]["config"]["u_x"] == {"state_key": "prior.u_x"}
    rebuilt = build_module(spec, state)
    assert isinstance(rebuilt.prior, lc.EmpiricalPrior)
    assert torch.equal(rebuilt.prior.u_x, c.basis.to_basis(images))  # the DCT of the images themselves


def test_a_buffer_set_after_construction_is_restored_without_naming_it():
    c = lc.BlurringDiffusion((3, 8, 8))
    c.register_buffer("fitted", None)  # what a statistic fitted later looks like before it is set
    c.fitted = torch.arange(6.0)
    c.prior = lc.GaussianPrior.fit(c, torch.rand(4, 3, 8, 8) * 2 - 1)
    rebuilt = build_module(module_spec(c), c.state_dict())
    assert torch.equal(rebuilt.fitted, torch.arange(6.0))
    assert isinstance(rebuilt.prior, lc.GaussianPrior) and torch.equal(rebuilt.prior.var, c.prior.var)


# ----------------------------------------------------------------- DiffusionModel
def test_diffusion_model_fixes_the_prediction_of_loss_sample_and_elbo():
    c, net = lc.BlurringDiffusion((3, 8, 8)), tiny_unet()
    model = lc.DiffusionModel(net, c, prediction="v")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t, noise = torch.tensor([0.2, 0.7]), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.loss(x, t=t, noise=noise), lc.diffusion_loss(net, c, x, prediction="v", t=t, noise=noise))
    net.eval()
    expected = lc.sample(net, c, 2, steps=3, prediction="v", generator=torch.Generator().manual_seed(2))
    net.train()
    got = model.sample(2, steps=3, method="ancestral", grid="uniform", generator=torch.Generator().manual_seed(2))
    assert torch.equal(got, expected) and net.training  # eval while sampling only
    x8 = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(4)) / 127.5 - 1
    net.eval()
    expected = lc.elbo(net, c, x8, prediction="v", generator=torch.Generator().manual_seed(3)).total
    net.train()
    assert torch.equal(model.elbo(x8, generator=torch.Generator().manual_seed(3)).total, expected)
    with pytest.raises(TypeError, match="fixed"):
        model.sample(2, prediction="eps")


def test_diffusion_model_requires_a_known_prediction():
    with pytest.raises(TypeError):
        lc.DiffusionModel(tiny_unet(), lc.DDPM((3, 8, 8)))
    with pytest.raises(ValueError, match="epsilon"):
        lc.DiffusionModel(tiny_unet(), lc.DDPM((3, 8, 8)), "epsilon")


@pytest.mark.parametrize("make", [lambda: lc.IHDM((3, 8, 8), num_steps=20), lambda: lc.DDPM((3, 8, 8), "cosine")])
def test_save_then_load_rebuilds_the_same_model(tmp_path, make):
    c = make()
    if isinstance(c, lc.IHDM):
        c.prior = lc.EmpiricalPrior.fit(c, torch.rand(3, 3, 8, 8) * 2 - 1)
    net = tiny_unet()
    model = lc.DiffusionModel(net, c, "x")
    model.save(tmp_path / "model.pt")
    loaded = lc.load(tmp_path / "model.pt")
    assert loaded.prediction == "x" and not loaded.training and type(loaded.corruption) is type(c)
    for a, b in zip(net.state_dict().values(), loaded.network.state_dict().values()):
        assert torch.equal(a, b)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(model.sample(3, steps=4, generator=g()), loaded.sample(3, steps=4, generator=g()))


# ----------------------------------------------------------------- Trainer checkpoints
def test_load_a_run_folder_gives_the_ema_weights_by_default(tmp_path):
    trainer = make_trainer(tmp_path / "run", steps=2, prediction="v")
    trainer.fit()
    model = lc.load(tmp_path / "run")
    assert model.prediction == "v" and model.info["step"] == 2 and model.info["config"]["steps"] == 2
    for a, b in zip(trainer.ema.module.state_dict().values(), model.network.state_dict().values()):
        assert torch.equal(a, b)
    raw = lc.load(tmp_path / "run" / "checkpoint.pt", ema=False)
    for a, b in zip(trainer.model.state_dict().values(), raw.network.state_dict().values()):
        assert torch.equal(a, b)


def old_checkpoint_state(model_args, buffers, net):
    """What today's main wrote from the CIFAR-10 example: the Trainer's keys, model_args in extra."""
    weights = net.state_dict()
    return {"corruption": "IHDM", "shape": model_args["shape"], "step": 7, "model": weights, "ema": weights,
            "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": [], "world_size": 1,
            "config": {"prediction": model_args["prediction"]},
            "extra": {"model_args": model_args, "buffers": buffers}}


def test_an_old_example_checkpoint_with_model_args_loads(tmp_path):
    unet = dict(image_size=8, in_channels=3, ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4],
                dropout=0.1, groups=4)
    args = {"corruption": "ihdm", "shape": [3, 8, 8], "settings": {"sigma": 0.02, "sigma_blur_max": 10.0,
                                                                    "num_steps": 50},
            "prediction": "x", "unet": unet}
    c = lc.IHDM((3, 8, 8), sigma=0.02, sigma_blur_max=10.0, num_steps=50)
    c.prior = lc.EmpiricalPrior.fit(c, torch.rand(4, 3, 8, 8) * 2 - 1)
    torch.manual_seed(0)
    net = UNet(**unet)
    save_checkpoint(old_checkpoint_state(args, {k: v.clone() for k, v in c.state_dict().items()}, net),
                    tmp_path / "checkpoint.pt")
    model = lc.load(tmp_path)
    assert model.prediction == "x" and model.info["step"] == 7
    assert isinstance(model.corruption, lc.IHDM) and model.corruption.sigma == 0.02
    assert model.corruption.num_steps == 50 and model.corruption.sigma_blur_max == 10.0
    assert isinstance(model.corruption.prior, lc.EmpiricalPrior) and torch.equal(model.corruption.prior.u_x,
                                                                                  c.prior.u_x)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), model.network.state_dict().values()))


def test_an_old_demo_checkpoint_loads(tmp_path):
    unet = dict(image_size=8, in_channels=3, ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], groups=4,
                dropout=0.0)
    torch.manual_seed(0)
    net = UNet(**unet)
    state = {"corruption": "BlurringDiffusion", "shape": [3, 8, 8], "step": 3, "model": net.state_dict(),
             "ema": net.state_dict(), "config": {"prediction": "x"},
             "extra": {"unet": unet, "corruption": {"sigma_blur_max": 5.0, "min_scale": 0.01}}}
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    model = lc.load(tmp_path / "checkpoint.pt")
    assert model.prediction == "x" and model.corruption.sigma_blur_max == 5.0 and model.corruption.min_scale == 0.01


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        lc.load(tmp_path / "missing")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        lc.load(tmp_path / "bad.pt")
    save_checkpoint({"step": 1, "model": {}}, tmp_path / "bare.pt")
    with pytest.raises(ModelLoadError, match="does not record how to build"):
        lc.load(tmp_path / "bare.pt")


def test_map_location_moves_the_model(tmp_path):
    model = lc.DiffusionModel(tiny_unet(), lc.DDPM((3, 8, 8)), "eps")
    model.save(tmp_path / "m.pt")
    loaded = lc.load(tmp_path / "m.pt", map_location="meta")
    assert all(p.device.type == "meta" for p in loaded.network.parameters())
    assert math.isclose(sum(p.numel() for p in loaded.parameters()), sum(p.numel() for p in model.parameters()))


# ----------------------------------------------------------------- the command line
def test_cli_info_and_sample(tmp_path, capsys):
    import json

    from lincorrupt.commands import main
    trainer = make_trainer(tmp_path / "run", steps=1, prediction="x")
    trainer.fit()
    assert main(["info", str(tmp_path / "run")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["corruption"] == "BlurringDiffusion" and info["prediction"] == "x" and info["step"] == 1
    assert info["settings"]["sigma_blur_max"] == 20.0 and info["trained_with"]["batch_size"] == 4
    assert info["parameters"] == sum(p.numel() for p in trainer.model.parameters())
    out = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "run"), "-n", "4", "-o", str(out), "--steps", "2", "--method", "ddim",
                 "--device", "cpu"]) == 0
    from PIL import Image
    assert Image.open(out).size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)  # a 2x2 grid of 8x8 images, padding 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    from lincorrupt.commands import main
    assert main(["info", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint") and "Traceback" not in err
    (tmp_path / "damaged.pt").write_bytes(b"\0" * 100)
    assert main(["sample", str(tmp_path / "damaged.pt")]) == 1
    assert "damaged.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", str(tmp_path), "-n", "0"])


def test_a_fresh_process_loads_a_unet_model_without_importing_lincorrupt_nn(tmp_path):
    """lc.load imports the library's own module of a recorded class; the command line relies on it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from lincorrupt.nn import UNet
    net = UNet(image_size=8, in_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), groups=4)
    lc.DiffusionModel(net, lc.DDPM((1, 8, 8)), "v").save(tmp_path / "model.pt")
    code = "import sys, lincorrupt as lc; m = lc.load(sys.argv[1]); print(type(m.network).__name__)"
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.pt")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(lc.__file__).parents[1])}, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "UNet", done.stderr


def test_python_m_lincorrupt_runs_the_command_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(lc.__file__).parents[1]
    done = subprocess.run([sys.executable, "-m", "lincorrupt", "info", str(tmp_path / "none")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: no checkpoint")


# ----------------------------------------------------------------- one default prediction
def test_every_entry_point_defaults_to_the_prediction_the_trainer_trains():
    """A network trained with TrainConfig's default and sampled, scored or bounded with the defaults of the free
    functions sees one prediction kind: a mismatch there would be silent (every kind is a valid tensor)."""
    import inspect

    from lincorrupt.likelihood import diffusion_term
    from lincorrupt.metrics.spectral import denoising_band_errors
    from lincorrupt.predictions import resolve_prediction
    from lincorrupt.sampling import Denoiser
    from lincorrupt.train import TrainConfig

    trained = TrainConfig().prediction
    # the free functions take the model's own kind (None), and a plain network's is the Trainer's
    free = {f.__qualname__: inspect.signature(f).parameters["prediction"].default
            for f in (lc.sample, lc.diffusion_loss, lc.elbo, diffusion_term, Denoiser, denoising_band_errors)}
    assert free == dict.fromkeys(free, None) and resolve_prediction(lambda z_t, t: z_t, None) == trained == "v"
    assert Denoiser(lambda z_t, t: z_t, lc.DDPM((1, 2, 2))).prediction.name == trained
    # DiffusionModel fixes the kind once and has no default: the object a checkpoint rebuilds says what it predicts
    assert inspect.signature(lc.DiffusionModel).parameters["prediction"].default is inspect.Parameter.empty


def test_the_free_functions_use_the_prediction_of_a_diffusion_model_and_refuse_another():
    """An x-predicting DiffusionModel handed to lc.bits_per_dim, lc.elbo, lc.sample or lc.diffusion_loss is read as
    x-predicting (it was read as v: a silently wrong bound); a contradicting explicit kind is refused."""
    c = lc.BlurringDiffusion((3, 8, 8))
    model = lc.DiffusionModel(tiny_unet(), c, prediction="x").eval()
    x8 = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(4)) / 127.5 - 1

    def g():
        return torch.Generator().manual_seed(3)

    as_x = lc.bits_per_dim(model.network, c, x8, prediction="x", generator=g())
    as_v = lc.bits_per_dim(model.network, c, x8, prediction="v", generator=g())
    assert not torch.allclose(as_x, as_v)  # the kinds give different bounds: a mix-up would show
    assert torch.equal(lc.bits_per_dim(model, c, x8, generator=g()), as_x)
    assert torch.equal(model.bits_per_dim(x8, generator=g()), as_x)
    assert torch.equal(lc.bits_per_dim(model, c, x8, prediction="x", generator=g()), as_x)  # agreeing: fine
    expected = lc.sample(model.network, c, 2, steps=3, prediction="x", generator=g())
    assert torch.equal(lc.sample(model, c, 2, steps=3, generator=g()), expected)
    t, noise = torch.tensor([0.2, 0.7]), torch.randn(2, 3, 8, 8, generator=g())
    assert torch.equal(lc.diffusion_loss(model, c, x8, t=t, noise=noise),
                       lc.diffusion_loss(model.network, c, x8, prediction="x", t=t, noise=noise))
    for call in (lambda: lc.bits_per_dim(model, c, x8, prediction="v"), lambda: lc.elbo(model, c, x8, prediction="v"),
                 lambda: lc.sample(model, c, 2, steps=3, prediction="eps"),
                 lambda: lc.diffusion_loss(model, c, x8, prediction="v")):
        with pytest.raises(ValueError, match="the model predicts 'x' .* but prediction='(v|eps)' was passed"):
            call()


def test_the_denoiser_and_the_band_errors_use_the_prediction_of_a_diffusion_model_and_refuse_another():
    """Denoiser and denoising_band_errors read an x-predicting DiffusionModel as x-predicting with the default
    prediction=None (they read it as v), as with prediction="x"; a contradicting explicit kind is refused."""
    from lincorrupt.metrics import GaussianFit, denoising_band_errors, radial_bands

    c = lc.BlurringDiffusion((3, 8, 8))
    model = lc.DiffusionModel(tiny_unet(), c, prediction="x").eval()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    u_t, t = c.basis.to_basis(x), torch.tensor([0.3])
    coefficients = c.coefficients(t)
    with torch.no_grad():
        default, as_x = (lc.Denoiser(model, c, p).x_hat(u_t, t, coefficients) for p in (None, "x"))
        as_v = lc.Denoiser(model.network, c, "v").x_hat(u_t, t, coefficients)
    assert torch.equal(default, as_x) and not torch.allclose(as_x, as_v)  # the kinds differ: a mix-up would show

    fit, bands = GaussianFit.of(x), radial_bands(8, 8, 2)

    def errors(prediction, m=model):
        return denoising_band_errors(m, c, fit, x, (0.3,), bands, prediction,
                                     generator=torch.Generator().manual_seed(6))[0.3]

    assert torch.equal(errors(None), errors("x")) and not torch.allclose(errors(None), errors("v", model.network))
    for call in (lambda: lc.Denoiser(model, c, "v"), lambda: errors("eps")):
        with pytest.raises(ValueError, match="the model predicts 'x' .* but prediction='(v|eps)' was passed"):
            call()


def test_diffusion_model_samples_with_the_corruptions_fast_sampling_by_default():
    """model.sample(n) runs the corruption's fast_sampling (20 evaluations), not 1,000 ancestral steps; the "data"
    grid needs data statistics, and falls back to "logsnr" without them."""
    c = lc.BlurringDiffusion((3, 8, 8))
    model = lc.DiffusionModel(tiny_unet(), c, prediction="v").eval()
    evaluations = []
    model.sample(2, callback=evaluations.append)
    assert len(evaluations) == c.fast_sampling.steps == 20 and c.fast_sampling.method == "dpm++3m"
    assert model.sampling_defaults() == {"method": "dpm++3m", "grid": "logsnr", "steps": 20}
    expected = lc.sample(model.network, c, 2, method="dpm++3m", grid="logsnr", steps=20,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.sample(2, generator=torch.Generator().manual_seed(0)), expected)
    c.fit_data_statistics(torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    assert model.sampling_defaults() == c.fast_sampling._asdict() == {"method": "dpm++3m", "grid": "data", "steps": 20}
    expected = lc.sample(model.network, c, 2, method="ancestral", grid="data", steps=5,
                         generator=torch.Generator().manual_seed(0))  # what is given wins, the rest is the default
    assert torch.equal(model.sample(2, method="ancestral", steps=5, generator=torch.Generator().manual_seed(0)),
                       expected)
