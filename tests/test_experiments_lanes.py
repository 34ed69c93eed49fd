"""An experiment's arms side by side (experiments/arm_lanes.py): the same numbers as one after another in this
process, an arm's failure raised in the caller, and the lane count from the thread budget."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ambient_fast.experiments import configs
from ambient_fast.experiments.arm_lanes import lane_count
from ambient_fast.experiments.controlled import run_experiment

pytest.importorskip("skimage", reason="the embedded dataset reads photographs shipped with scikit-image")

TINY_TRAINING = (("total_steps", 3), ("network.model_channels", 8), ("checkpoint_every", 100),
                 ("snapshot_every", 0), ("log_every", 100))


def _tiny(**changes) -> configs.Experiment:
    demo = configs.experiment("demo-cpu-blur1.0")
    tiny = dict(arms=(configs.Arm("only_clean"), configs.Arm("all_data"), configs.Arm("classifier")),
                data=dataclasses.replace(demo.data, train_count=64, test_count=32), train_overrides=TINY_TRAINING,
                classifier=configs.ClassifierSetting(steps=3, batch_size=8, model_channels=8, draws=1, levels=16),
                generated_count=16, sampler_steps=2)
    return dataclasses.replace(demo, **{**tiny, **changes})


@pytest.fixture
def threads():
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


def test_arms_in_lanes_equal_arms_one_after_another(tmp_path, threads):
    """Two lanes (two threads, one per arm: the baselines train in worker processes beside the classifiers) and
    one lane (one thread: every arm here, in turn) give the same annotation and bit-identical samples and metrics:
    the arms' thread count is pinned, so where they run does not matter."""
    experiment, results, notes = _tiny(), {}, {}
    for count in (1, 2):
        threads(count)
        assert lane_count(experiment, device="cpu") == count
        notes[count] = []
        results[count] = run_experiment(experiment, out_dir=tmp_path / f"threads{count}", device="cpu",
                                        log=notes[count].append)
        assert torch.get_num_threads() == count, "the arms' pinned thread count is restored"
    assert any("beside 1 arm(s) training" in line for line in notes[2])
    assert not any("beside" in line for line in notes[1])
    one, two = results[1], results[2]
    torch.testing.assert_close(one.annotations[0].sigma_min, two.annotations[0].sigma_min, rtol=0, atol=0)
    assert [r.arm for r in one.arms] == [r.arm for r in two.arms] == ["only_clean", "all_data", "classifier"]
    for first, second in zip(one.arms, two.arms):
        assert torch.equal(first.samples, second.samples), first.arm
        assert first.metrics["test"]["fd_pixels"] == second.metrics["test"]["fd_pixels"]
        torch.testing.assert_close(first.sigma_min, second.sigma_min, rtol=0, atol=0)
    assert not torch.equal(one.arms[0].samples, one.arms[1].samples)  # the arms did differ


def test_an_arm_failing_in_its_worker_is_raised_here(tmp_path, threads):
    """A training error inside a lane's worker process reaches the caller with its message (not a hang, not a
    bare exit code), and the experiment stops."""
    threads(2)
    broken = _tiny(train_overrides=(*TINY_TRAINING, ("batch_size", 3), ("batch_gpu", 2)))
    with pytest.raises(Exception, match="batch_size 3 is not a multiple of batch_gpu 2"):
        run_experiment(dataclasses.replace(broken, arms=broken.arms[:2]), out_dir=tmp_path, device="cpu",
                       log=lambda *_: None)


def test_lane_count_follows_the_thread_budget(threads):
    experiment = _tiny()
    threads(2)
    assert lane_count(experiment, device="cpu") == 2
    assert lane_count(dataclasses.replace(experiment, arm_threads=2), device="cpu") == 1
    assert lane_count(dataclasses.replace(experiment, arm_threads=0), device="cpu") == 1  # every thread per arm
    assert lane_count(experiment, device="meta") == 1  # an accelerator: one arm at a time
    threads(8)
    assert lane_count(experiment, device="cpu") == 3  # no more lanes than arms
