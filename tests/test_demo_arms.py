"""`python -m ambient_fast.demo --arms`: three arms by default for the blur demo, the fixed and weighted ablations on request,
an unknown arm refused with one line naming it."""
import pytest

from ambient_fast import demo


@pytest.fixture
def captured(monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def fake_run(experiment, **_):
        seen.append(experiment)
        raise Stop  # nothing trains: only the experiment handed to the runner matters here

    monkeypatch.setattr(demo, "run_experiment", fake_run)
    return seen, Stop


@pytest.mark.parametrize("argv, arms", [
    ([], ["only_clean", "all_data", "classifier"]),
    (["--arms", "all"], ["only_clean", "all_data", "fixed", "classifier", "weighted", "weighted_floor",
                        "weighted_capped"]),
    (["--arms", "weighted", "classifier"], ["classifier", "weighted"]),
    (["--arms", "fixed", "only_clean"], ["only_clean", "fixed"]),
    (["--experiment", "demo-cpu-ood"], ["only_clean", "all_data", "fixed_crops_0.05", "fixed_crops_0.2", "crops"]),
])
def test_arms_selected(captured, argv, arms):
    seen, stop = captured
    with pytest.raises(stop):
        demo.main(argv)
    assert [arm.name for arm in seen[0].arms] == arms


def test_unknown_arm_is_one_line_error(captured, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--arms", "classifer"])
    assert exit_info.value.code == 2
    assert "no arm classifer" in capsys.readouterr().err
