"""The out-of-distribution demo with crop(sigma) measured under the full image's GroupNorm statistics (issue 10
point 7, docs/results.md): registered like `demo-cpu-ood` except for its given crop(sigma) table, which leaves
room for the crops classifier's small crops and which the runner uses without measuring; the command line and
`python -m ambient_fast.demo` hand it to the runner as registered. Nothing trains here: seconds."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ambient_fast import cli, demo
from ambient_fast.annotate.crop_size import CropTable
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


def test_registered_like_the_demo_except_its_crop_table():
    base, local = configs.experiment("demo-cpu-ood"), configs.experiment(NAME)
    assert not base.crops.crop_table and local.crops.crop_table, "the demo measures it, this one is given"
    same = replace(local, name=base.name, description=base.description, crops=replace(local.crops, crop_table=()))
    assert same == base, "everything else as in demo-cpu-ood"
    table = CropTable(*map(tuple, zip(*local.crops.crop_table)))  # valid: increasing sigmas, non-decreasing crops
    assert table.sigmas == local.crops.measure_sigmas, "measured at the demo's levels"
    low_noise = max(c for s, c in local.crops.crop_table if s <= 0.05)
    assert low_noise <= local.data.resolution_px // 2, "the point of it: small crops at low noise"
    assert min(local.crops.crop_sizes) < low_noise < max(local.crops.crop_sizes), "some crop sizes map to sigma > 0"


def test_the_runner_uses_the_given_table_without_measuring(tmp_path):
    local = configs.experiment(NAME)
    table, measurement = controlled.crop_table_for(local, denoiser_run=tmp_path / "no-such-run",
                                                   images=torch.zeros(2, 3, 16, 16), seed=0, device="cpu")
    assert measurement is None and list(zip(table.sigmas, table.crops)) == list(local.crops.crop_table)


@pytest.mark.parametrize("argv", [["experiment", NAME, "--seeds", "0"], ["demo", "--experiment", NAME]])
def test_command_line_hands_it_over_unchanged(handed, tmp_path, argv):
    with pytest.raises(Stop):
        if argv[0] == "demo":
            demo.main([*argv[1:], "--out", str(tmp_path)])
        else:
            cli.main([*argv, "--out", str(tmp_path)])
    assert handed == [configs.experiment(NAME)]
