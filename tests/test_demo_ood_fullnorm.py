"""The out-of-distribution demo with crop(sigma) measured under the full image's GroupNorm statistics (issue 10
point 7, docs/results.md): registered like `demo-cpu-ood` except crops.measure_norm_statistics = "full", which the
runner's crop_table_for passes to measure_crop_size; the command line and `python -m ambient_fast.demo` hand it to
the runner as registered. Nothing trains here: seconds."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from ambient_fast import cli, demo, sampling
from ambient_fast.annotate.crop_size import measure_crop_size
from ambient_fast.annotate.norm_statistics import NORM_STATISTICS
from ambient_fast.experiments import configs, controlled

NAME = "demo-cpu-ood-fullnorm"


class Stop(Exception):
    pass


@pytest.fixture
def handed(monkeypatch):
    """The experiments handed to the runner, which stops at once (nothing trains)."""
    seen = []

    def fake_run(experiment, **_):
        seen.append(experiment)
        raise Stop

    monkeypatch.setattr(controlled, "run_experiment", fake_run)  # the CLI imports it from here when it runs
    monkeypatch.setattr(demo, "run_experiment", fake_run)
    return seen


def test_registered_like_the_demo_except_its_norm_statistics():
    base, local = configs.experiment("demo-cpu-ood"), configs.experiment(NAME)
    assert not base.crops.crop_table and not local.crops.crop_table, "both measure crop(sigma) at run time"
    assert (base.crops.measure_norm_statistics, local.crops.measure_norm_statistics) == ("window", "full")
    same = replace(local, name=base.name, description=base.description,
                   crops=replace(local.crops, measure_norm_statistics="window"))
    assert same == base, "everything else as in demo-cpu-ood"
    assert configs.CropsSetting().measure_norm_statistics == "window", "the library's default"
    with pytest.raises(ValueError, match="measure_norm_statistics must be 'window' or 'full'"):
        replace(local.crops, measure_norm_statistics="image")


class NormedDenoiser(nn.Module):
    """A convolution, a GroupNorm and a convolution: what the full image's statistics change."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(),
                                 nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x, sigma):
        return x - sigma.view(-1, 1, 1, 1) * self.net(x)


def test_the_runner_measures_with_the_full_images_statistics(monkeypatch, tmp_path):
    denoiser = NormedDenoiser()
    monkeypatch.setattr(sampling, "load_denoiser", lambda run, **_: (denoiser, {}))  # no trained run needed
    local = configs.experiment(NAME)
    local = replace(local, crops=replace(local.crops, measure_sigmas=(0.1, 1.0), measure_images=6))
    images = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    table, measurement = controlled.crop_table_for(local, denoiser_run=tmp_path / "run", images=images, seed=0,
                                                   device="cpu")
    assert measurement.norm_statistics == "full" and table == measurement.table
    expected = {statistics: measure_crop_size(denoiser, images[:6], sigmas=(0.1, 1.0), patch=2, seed=0,
                                              eps=local.crops.measure_eps, norm_statistics=statistics).losses
                for statistics in NORM_STATISTICS}
    assert torch.equal(measurement.losses, expected["full"])
    assert not torch.equal(measurement.losses, expected["window"]), "the option reaches the measurement"


@pytest.mark.parametrize("argv", [["experiment", NAME, "--seeds", "0"], ["demo", "--experiment", NAME]])
def test_command_line_hands_it_over_unchanged(handed, tmp_path, argv):
    with pytest.raises(Stop):
        if argv[0] == "demo":
            demo.main([*argv[1:], "--out", str(tmp_path)])
        else:
            cli.main([*argv, "--out", str(tmp_path)])
    assert handed == [configs.experiment(NAME)]
