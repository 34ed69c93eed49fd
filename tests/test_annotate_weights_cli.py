"""`ambient-fast annotate weights` end to end on a tiny .npz: the acceptance table in the file, the clip, the gate,
the share cap, `annotate show`, and one-line errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cli_errors import user_error

from ambient_fast import cli
from ambient_fast.annotate.images import load_images
from ambient_fast.annotate.synthetic import blurred, random_fields
from ambient_fast.annotations import Annotations
from ambient_fast.buffer import buffer_factor

SIZE, HALF, LEVELS = 8, 24, 8


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights_cli")
    clean = random_fields(torch.arange(HALF), resolution=SIZE)
    corrupted = blurred(random_fields(torch.arange(HALF, 2 * HALF), resolution=SIZE), 2.0)
    np.savez(root / "clean.npz", images=clean.numpy())
    np.savez(root / "corrupted.npz", images=corrupted.numpy())
    np.savez(root / "all.npz", images=torch.cat([clean, corrupted]).numpy())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert cli.main(["annotate", "train-classifier", "--clean", str(root / "clean.npz"), "--corrupted",
                     str(root / "corrupted.npz"), "--out", str(root / "c.safetensors"), "--steps", "150", "--folds",
                     "2", "--model-channels", "4", "--channel-mult", "1", "--batch-size", "8", "--levels", "16",
                     "--report-samples", "8", "--report-draws", "1", "--no-figure"]) == 0
    data = load_images(root / "all.npz")
    sigma_min = torch.cat([torch.zeros(HALF), torch.full((HALF,), 0.3)]).double()
    Annotations(data.sample_ids, sigma_min, torch.zeros(2 * HALF), keys=data.keys).save(root / "ann.safetensors")
    yield root
    torch.set_num_threads(threads)


def weights(root, out, *extra) -> Annotations:
    assert cli.main(["annotate", "weights", "--images", str(root / "all.npz"), "--classifier",
                     str(root / "c.safetensors"), "--annotations", str(root / "ann.safetensors"), "--out", str(out),
                     "--levels", str(LEVELS), "--draws", "1", *extra]) == 0
    return Annotations.load(out)


def test_weights_file_clip_gate_and_cap(workspace, tmp_path, capsys):
    one = weights(workspace, tmp_path / "c1.safetensors", "--clip", "1")
    assert one.acceptance.table.shape == (2 * HALF, LEVELS)
    assert bool((one.acceptance.table[:HALF] == 1).all())  # clean samples are never thinned
    assert torch.equal(one.sigma_min, Annotations.load(workspace / "ann.safetensors").sigma_min)  # gate keep
    assert one.provenance["weights"]["clip"] == 1.0
    assert "taken/pass" in capsys.readouterr().out
    # a = min(1, w / c): where c = 1 gives a < 1, c = 2 gives exactly half of it
    two = weights(workspace, tmp_path / "c2.safetensors", "--clip", "2")
    a1, a2 = one.acceptance.table[HALF:].double(), two.acceptance.table[HALF:].double()
    below = a1 < 1
    assert bool(below.any())
    torch.testing.assert_close(a2[below], a1[below] / 2, rtol=1e-6, atol=1e-7)
    # gate floor: sigma_min = the first grid level where a >= floor
    floor = weights(workspace, tmp_path / "floor.safetensors", "--gate", "floor", "--min-acceptance", "0.3")
    grid = floor.acceptance.sigmas
    for row, level in zip(floor.acceptance.table[HALF:].double(), floor.sigma_min[HALF:].tolist()):
        above = torch.nonzero(row >= 0.3).flatten()
        assert level == (float(grid[above[0]]) if above.numel() else math.inf)
    # the cap: at every grid level the corrupted share of what is taken stays <= 0.2
    capped = weights(workspace, tmp_path / "cap.safetensors", "--max-share", "0.2")
    past_gate = grid[None, :] > buffer_factor() * capped.sigma_min[HALF:, None]
    taken = (capped.acceptance.table[HALF:].double() * past_gate).sum(0)
    assert bool((taken / (HALF + taken) <= 0.2 + 1e-6).all())
    assert cli.main(["annotate", "show", str(tmp_path / "cap.safetensors")]) == 0
    assert "acceptance (density-ratio weights" in capsys.readouterr().out


def test_weights_errors_are_one_line(workspace, tmp_path, capsys):
    base = ["annotate", "weights", "--images", str(workspace / "all.npz"), "--classifier",
            str(workspace / "c.safetensors"), "--out", str(tmp_path / "w.safetensors"), "--levels", "4"]
    assert user_error(capsys, [*base, "--annotations", str(workspace / "ann.safetensors"), "--clip", "0"],
                      "--clip must be a finite number > 0")
    clean = load_images(workspace / "all.npz")
    Annotations.clean(clean.sample_ids, keys=clean.keys).save(tmp_path / "clean.safetensors")
    assert user_error(capsys, [*base, "--annotations", str(tmp_path / "clean.safetensors")],
                      "calls every image clean")
    assert not (tmp_path / "w.safetensors").exists()
