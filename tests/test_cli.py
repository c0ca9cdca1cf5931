"""`lincorrupt sample`: arguments refused at parse time or before any work, in one line; sampling in batches that are
written as they are done; the progress bar; the corruption's fast sampler by default."""

import numpy as np
import pytest
import torch
from PIL import Image

import lincorrupt as lc
from lincorrupt.commands import main
from lincorrupt.nn import UNet

SHAPE = (3, 8, 8)


def tiny_model(num_classes=None) -> lc.DiffusionModel:
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=3, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), groups=4,
               num_classes=num_classes)
    return lc.DiffusionModel(net, lc.BlurringDiffusion(SHAPE), "x")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.pt"
    tiny_model().save(path)
    return path


def parse_error(argv, capsys) -> str:
    """The one-line argparse error of ``argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("option, value, message", [
    ("-n", "abc", "argument -n/--num-samples: expected a positive integer, got 'abc'"),
    ("-n", "0", "argument -n/--num-samples: expected a positive integer, got 0"),
    ("--steps", "1.5", "argument --steps: expected a positive integer, got '1.5'"),
    ("--batch-size", "-3", "argument --batch-size: expected a positive integer, got -3"),
    ("--guidance", "nan", "argument --guidance: expected a finite number, got nan"),
    ("--guidance", "inf", "argument --guidance: expected a finite number, got inf"),
    ("--guidance=-inf", None, "argument --guidance: expected a finite number, got -inf"),
    ("--guidance", "two", "argument --guidance: expected a number, got 'two'"),
    ("--device", "bogus", "argument --device: expected a device such as cpu, cuda or cuda:1, got 'bogus'"),
])
def test_bad_values_are_refused_when_parsed_with_a_readable_message(tmp_path, capsys, option, value, message):
    last = parse_error(["sample", str(tmp_path), option] + ([] if value is None else [value]), capsys)
    assert last.endswith(message), last


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_cuda_device_without_a_gpu_is_one_line_before_loading(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "none.pt"), "--device", "cuda:0", "-o", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda:0 is not available here") and err.count("\n") == 1, err
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("output, message", [
    ("grid.txt", "extension '.txt'; expected a grid image (.png, "),
    ("samplesout", "no extension; expected a grid image"),
    ("a_file/grid.png", "a_file is a file, not a folder"),
    ("a_file/deeper/grid.png", "a_file is a file, not a folder"),
    ("a_file/", "a_file is a file; a trailing / asks for a folder of PNGs"),
    ("a_dir", "a_dir is a folder: name a grid image inside it, or write"),
])
def test_the_output_is_checked_before_the_model_is_even_loaded(tmp_path, capsys, monkeypatch, output, message):
    """The run named does not exist: the -o error comes first, so nothing was loaded or sampled."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_dir").mkdir()
    assert main(["sample", str(tmp_path / "missing_run"), "-o", output]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: -o ") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]


def test_more_images_than_a_grid_or_the_disk_holds_are_refused_before_sampling(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lc.DiffusionModel, "sample", lambda *a, **k: pytest.fail("sampled"))
    assert main(["sample", str(saved), "-n", "1000000000", "-o", str(tmp_path / "grid.png")]) == 1
    err = capsys.readouterr().err
    assert "a grid of 1000000000 images of 8x8 would be 316232x316232 pixels (at most 8192" in err, err  # 31623 a row
    assert f"-o {tmp_path / 'grid'}/" in err  # what to do instead
    assert main(["sample", str(saved), "-n", str(10**15), "-o", f"{tmp_path / 'many'}/"]) == 1
    err = capsys.readouterr().err
    assert f"{10**15} images of 3x8x8 need about" in err and "GB free: ask for fewer with -n" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "000000.png").write_bytes(b"an earlier run's image")
    assert main(["sample", str(saved), "-n", "2", "-o", f"{tmp_path / 'old'}/"]) == 1
    assert "holds PNG files already" in capsys.readouterr().err
    assert (tmp_path / "old" / "000000.png").read_bytes() == b"an earlier run's image"


def quantised(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, rounded as torchvision's save_image does."""
    return ((x.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_batches_are_written_one_png_each_and_are_the_models_samples(saved, tmp_path, capsys):
    """-n 5 --batch-size 2: three calls of model.sample with one generator, each image one PNG; the grid of the same
    arguments tiles the same images."""
    folder = tmp_path / "samples"
    assert main(["sample", str(saved), "-n", "5", "--batch-size", "2", "--steps", "3", "-o", f"{folder}/",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"00000{i}.png" for i in range(5)]
    model, g = lc.load(saved), torch.Generator().manual_seed(0)
    expected = np.concatenate([quantised(model.sample(k, steps=3, generator=g)) for k in (2, 2, 1)])
    written = np.stack([np.asarray(Image.open(folder / f"00000{i}.png").convert("RGB")) for i in range(5)])
    assert np.array_equal(written, expected)
    grid = tmp_path / "grid.png"
    assert main(["sample", str(saved), "-n", "5", "--batch-size", "2", "--steps", "3", "-o", str(grid)]) == 0
    tiles = np.asarray(Image.open(grid).convert("RGB"))
    assert tiles.shape == (2 * 10 + 2, 3 * 10 + 2, 3)  # 3 images a row, 2 rows, 2 pixels of padding
    for i in range(5):
        row, col = divmod(i, 3)
        assert np.array_equal(tiles[2 + 10 * row:10 + 10 * row, 2 + 10 * col:10 + 10 * col], expected[i])


def test_the_default_sampler_is_the_corruptions_fast_one_with_a_progress_bar(saved, tmp_path, capsys):
    assert main(["sample", str(saved), "-n", "2", "-o", str(tmp_path / "g.png")]) == 0
    captured = capsys.readouterr()
    assert "2 samples (dpm++3m, 20 steps, logsnr grid" in captured.out  # fast_sampling, no data statistics saved
    assert "sampling 2 images" in captured.err and "20/20" in captured.err  # the bar counts network evaluations
    assert main(["sample", str(saved), "-n", "2", "-o", str(tmp_path / "g.png"), "--no-progress",
                 "--method", "ancestral", "--steps", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "2 samples (ancestral, 4 steps, logsnr grid" in captured.out


def test_labels_run_on_across_batches(tmp_path, monkeypatch):
    tiny_model(num_classes=3).save(tmp_path / "c.pt")
    seen = []
    real = lc.DiffusionModel.sample
    monkeypatch.setattr(lc.DiffusionModel, "sample",
                        lambda self, n, **kw: seen.append(kw["labels"].tolist()) or real(self, n, **kw))
    assert main(["sample", str(tmp_path / "c.pt"), "-n", "5", "--batch-size", "2", "--steps", "1", "-o",
                 str(tmp_path / "g.png"), "--labels", "2,-1,0"]) == 0
    assert seen == [[2, -1], [0, 2], [-1]]


def test_ctrl_c_keeps_the_images_written_and_ends_in_one_line(saved, tmp_path, capsys, monkeypatch):
    calls = []
    real = lc.DiffusionModel.sample

    def second_batch_interrupted(self, n, **kw):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, n, **kw)

    monkeypatch.setattr(lc.DiffusionModel, "sample", second_batch_interrupted)
    assert main(["sample", str(saved), "-n", "4", "--batch-size", "2", "--steps", "1", "--no-progress",
                 "-o", f"{tmp_path / 'part'}/"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == ["000000.png", "000001.png"]
