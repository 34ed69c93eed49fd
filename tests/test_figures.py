"""Figures people can read: every figure is a PNG plus an SVG beside it, drawn by matplotlib with labelled axes
(log axes where the quantity is a noise level); the Figure 10 regime counts; upscaled sample grids."""
from __future__ import annotations

import subprocess
import sys
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from ambient_fast import figures  # noqa: E402
from ambient_fast.annotations import Annotations  # noqa: E402
from ambient_fast.buffer import buffer_factor, select_sigma_tn  # noqa: E402
from ambient_fast.sampling import image_grid, save_image_grid, save_outputs  # noqa: E402

LOG_TICK = r"10^{-2}"  # matplotlib writes each tick's text into the SVG ($\mathdefault{10^{-2}}$)


def ood_annotations() -> Annotations:
    """The setting of the paper's Figure 10: clean target samples, corrupted target samples (finite sigma_min) and
    out-of-distribution samples usable only through their crops (sigma_min = inf, sigma_max > 0)."""
    generator = torch.Generator().manual_seed(0)
    sigma_min = torch.cat([torch.zeros(10), torch.exp(torch.randn(60, generator=generator) * 0.5 - 0.5),
                           torch.full((30,), float("inf"))]).double()
    sigma_max = torch.cat([torch.zeros(70), 0.3 * torch.rand(30, generator=generator)]).double()
    return Annotations(torch.arange(100), sigma_min, sigma_max)


def check_figure(paths, *, width: tuple[int, int], height: tuple[int, int], texts: tuple[str, ...]) -> str:
    png, svg = map(str, paths)
    assert png.endswith(".png") and svg.endswith(".svg")
    with Image.open(png) as image:
        assert image.format == "PNG" and width[0] <= image.size[0] <= width[1] and height[0] <= image.size[1] <= height[1]
    root = ElementTree.parse(svg).getroot()  # PIL reads no SVG: parse it as the XML it is, of the same size
    assert root.tag.endswith("svg") and root.get("width").endswith("pt")
    assert abs(float(root.get("width")[:-2]) * 120 / 72 - image.size[0]) <= 2  # PNG at 120 dpi, SVG in points
    text = open(svg).read()
    assert "<text" in text, "the SVG's text stays text (searchable)"
    for needle in texts:
        assert needle in text, f"{needle!r} is not in {svg}"
    return text


def test_regimes_split_the_usable_samples_like_the_sampler():
    annotations = ood_annotations()
    levels = figures.log_levels(0.002, 80.0, 50)
    regimes = figures.usable_regimes(annotations.sigma_min, annotations.sigma_max, levels, chunk=7)
    total = sum(regimes.values())
    assert torch.equal(total, torch.tensor([int(annotations.usable(float(s)).sum()) for s in levels]))
    assert torch.all(regimes["clean"] == 10)
    # noisy data is exactly where the sampler trains with sigma_tn = sigma_min > 0; crops where it is usable with
    # sigma_tn = 0 although sigma_min > 0
    for j, level in enumerate(levels.tolist()):
        selection = select_sigma_tn(torch.full((100,), level, dtype=torch.float64), annotations.sigma_min,
                                    annotations.sigma_max)
        assert int((selection.usable & (selection.sigma_tn > 0)).sum()) == int(regimes["noisy"][j])
        assert int((selection.usable & (selection.sigma_tn == 0) & (annotations.sigma_min > 0)).sum()) == \
            int(regimes["crops"][j])
    # the donut: out-of-distribution samples at low noise only, corrupted ones above b * sigma_min only
    assert regimes["crops"][0] > 0 and regimes["crops"][-1] == 0
    assert regimes["noisy"][0] == 0 and regimes["noisy"][-1] == 60
    codes = figures.regime_matrix(torch.tensor([0.0, 1.0, float("inf")]), torch.tensor([0.0, 0.0, 0.1]),
                                  torch.tensor([0.05, 1.0, 1.0 * buffer_factor() * 1.01]))
    assert codes.tolist() == [[1, 1, 1], [0, 0, 2], [3, 0, 0]]


def test_annotate_show_figure(tmp_path):
    from ambient_fast.annotate.show import plot

    written = plot(ood_annotations(), tmp_path / "show.png", report=pytest.fail)
    assert written == [str(tmp_path / "show.png"), str(tmp_path / "show.svg")]
    check_figure(written, width=(1200, 2600), height=(400, 1000),
                 texts=("noise level sigma (log)", "usable samples", "% of the 100 samples", "paper Fig. 10",
                        "donut", "sigma_min histogram", "annotated level sigma (log)", "not usable (donut hole)",
                        "crops: s &lt; sigma_max", "sigma_min = inf: 30", LOG_TICK))


def test_annotate_show_edge_cases(tmp_path):
    from ambient_fast.annotate.show import plot

    clean = Annotations.clean(torch.arange(5))  # nothing to histogram: the axes are still drawn
    text = check_figure(plot(clean, tmp_path / "clean.png", report=pytest.fail), width=(1200, 2600),
                        height=(400, 1000), texts=("no sample has 0 &lt; sigma_min", LOG_TICK))
    assert "sigma_min = 0 (clean): 5" in text
    one = Annotations(torch.arange(1), torch.tensor([0.5]), torch.tensor([0.0]))  # one sample, one level
    check_figure(plot(one, tmp_path / "one.svg", sigma_lo=0.1, sigma_hi=10.0, report=pytest.fail),
                 width=(1200, 2600), height=(400, 1000), texts=("10^{0}",))
    assert (tmp_path / "one.png").is_file()


def test_experiment_usable_per_level_figure(tmp_path):
    from ambient_fast.experiments import plots

    annotations = ood_annotations()
    zeros = torch.zeros(100, dtype=torch.float64)
    arms = {"all_data": (zeros, zeros), "crops": (annotations.sigma_min, annotations.sigma_max),
            "only_clean": (zeros[:10], zeros[:10]), "classifier": (annotations.sigma_min, zeros)}
    written = plots.usable_per_level(arms, tmp_path / "usable_per_level.png", levels=figures.log_levels(0.002, 80, 97),
                                     title="toy: usable samples")
    check_figure(written, width=(1200, 2600), height=(600, 1400),
                 texts=("arm crops", "arm only_clean", "noise level sigma (log)", "usable samples", "% of the 10 samples",
                        "buffer b = 1.15", LOG_TICK))


def test_experiment_crop_size_figure(tmp_path):
    from ambient_fast.annotate.crop_size import CropMeasurement, crop_table_from_losses
    from ambient_fast.experiments import plots

    sigmas, contexts = [0.01, 0.1, 1.0], [4, 8, 12, 16]
    losses = torch.tensor([[s * (1 + s / c) for c in contexts] for s in sigmas], dtype=torch.float64)
    measurement = CropMeasurement(crop_table_from_losses(losses, contexts, sigmas, 0.05), contexts, losses, 0.05,
                                  torch.full_like(losses, 1e-3))
    written = plots.crop_size(measurement, tmp_path / "crop_size-seed0.png", title="toy crop(sigma)")
    check_figure(written, width=(900, 2000), height=(350, 900),
                 texts=("context around the centre patch (px)", "loss / full-image loss (log)", "crop(sigma) (px)",
                        "noise level sigma (log)", "eps = 0.05", "sigma 0.1", "full image (16 px)", LOG_TICK))


def test_importing_the_package_does_not_import_matplotlib():
    code = ("import sys, ambient_fast, ambient_fast.figures, ambient_fast.annotate.show, "
            "ambient_fast.experiments.plots, ambient_fast.sampling; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_grid_upscales_with_separators():
    generator = torch.Generator().manual_seed(0)
    samples = torch.rand(10, 3, 16, 16, generator=generator) * 2 - 1  # 4 columns x 3 rows
    grid = image_grid(samples)
    scale, gap = 8, 2  # 4 * 16 = 64 px -> x8 = 512 px
    assert grid.dtype == np.uint8 and grid.shape == (3 * 128 + 2 * gap, 4 * 128 + 3 * gap, 3)
    pixels = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i in range(10):
        r, q = divmod(i, 4)
        tile = grid[r * (128 + gap):r * (128 + gap) + 128, q * (128 + gap):q * (128 + gap) + 128]
        np.testing.assert_array_equal(tile, pixels[i].repeat(scale, axis=0).repeat(scale, axis=1))
    assert (grid[128:128 + gap] == 255).all() and (grid[:, 128:128 + gap] == 255).all()  # the separators
    assert (grid[2 * (128 + gap):, 2 * (128 + gap):] == 255).all()  # the empty cells of the last row
    np.testing.assert_array_equal(image_grid(samples[:4], min_width=0, separator=0)[:16, :16], pixels[0])
    assert image_grid(torch.zeros(64, 3, 64, 64)).shape == (8 * 64 + 14, 8 * 64 + 14, 3)  # wide enough: no scaling


def test_saved_grids_are_upscaled_and_the_npz_is_not(tmp_path):
    samples = torch.rand(5, 3, 4, 4) * 2 - 1  # 3 columns x 2 rows of 4 px -> x43 = 516 px wide
    save_outputs(samples, torch.arange(5), png=tmp_path / "grid.png", npz=tmp_path / "out.npz")
    data = np.load(tmp_path / "out.npz")
    assert data["images"].shape == (5, 4, 4, 3) and data["samples"].shape == (5, 3, 4, 4)
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (3 * 172 + 2 * 2, 2 * 172 + 2) and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image)[:172, :172], data["images"][0].repeat(43, 0).repeat(43, 1))
    grey = save_image_grid(torch.zeros(4, 1, 16, 16), tmp_path / "grey.png")
    with Image.open(grey) as image:
        assert image.mode == "L" and image.size == (2 * 256 + 2, 2 * 256 + 2)
    with pytest.raises(ValueError, match="channels"):
        save_image_grid(torch.zeros(2, 4, 8, 8), tmp_path / "latents.png")


def test_the_experiment_report_names_the_figures_it_wrote(tmp_path):
    from types import SimpleNamespace

    from ambient_fast.experiments.report import figure_lines

    for name in ("usable_per_level.png", "usable_per_level.svg", "crop_size-seed0.png", "crop_size-seed0.svg",
                 "samples_crops-seed0.png", "data_clean.png", "data_extra.png"):
        (tmp_path / name).write_bytes(b"")
    result = SimpleNamespace(out_dir=tmp_path, arms=[SimpleNamespace(seed=0)], crops_annotations={0: None},
                             experiment=SimpleNamespace(arms=[SimpleNamespace(name="crops"), SimpleNamespace(name="all")]))
    assert figure_lines(result) == [
        "usable samples per level, the paper's Figure 10 view per arm: usable_per_level.png, usable_per_level.svg",
        "crop(sigma) measurement (Figures 11-14): crop_size-seed0.png, crop_size-seed0.svg",
        "sample grids per arm and seed: samples_crops-seed0.png",  # samples_all-seed0.png was not written
        "training data grids: data_clean.png, data_extra.png"]
