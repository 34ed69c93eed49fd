"""An experiment changed from the command line (`ambient-fast experiment NAME --data ... --corruption ...`): every
option maps onto the Experiment dataclass here, in one place, with dataclasses.replace; an option the experiment
cannot use is refused with a one-line UserError before any work. `changes` lists what differs from the registered
experiment, for results.json and the report's title.

Python users get the same with modify(experiments.configs.experiment(NAME), data=..., test=..., ...)."""
from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

from ..errors import UserError, user_input
from .configs import EXPERIMENTS, Experiment

WEIGHT_METRICS = ("fid", "fd_dinov2")  # need local network weights (ambient_fast.metrics.features)
# Embedded crops come from 128 px blocks downsampled up to 4x (embedded_data.EmbeddedDataConfig): 32 px at most.
EMBEDDED_MAX_PX = 32


def _corruption(experiment: Experiment, name: str | None, parameters: dict) -> dict:
    """The DataSetting fields of the corruption asked for: --corruption NAME (its own parameters only) or --param
    alone (the experiment's corruption with these parameters changed), checked by building it."""
    from ..corruptions import make_corruption

    if experiment.data.out_of_distribution:
        raise UserError(f"--corruption / --param: experiment {experiment.name!r} is out-of-distribution (its extra "
                        "data is other classes, not corrupted images); choose a corruption experiment")
    base = {} if name else experiment.data.corruption_kwargs()
    name = name or experiment.data.corruption
    merged = {**base, **parameters}
    if name == "motion_blur" and (parameters.get("angle_deg") or 0) < 0:
        merged["angle_deg"] = None  # as `ambient-fast corrupt`: a negative angle asks for one drawn per sample
    with user_input(f"--corruption {name} --param", ValueError, TypeError):
        make_corruption(name, **merged)
    return {"corruption": name, "corruption_parameters": tuple(merged.items())}


def _train_settings(experiment: Experiment, preset: str | None, settings: dict, steps: int | None) -> dict:
    """train_preset / train_overrides: --preset replaces the preset and drops the experiment's own overrides (they
    size its network for its preset); --set FIELD=VALUE and --steps add to what stays. Checked by building the
    training config."""
    from ..train.config import ConfigError
    from ..train.config import preset as build

    overrides = {} if preset else dict(experiment.train_overrides)
    overrides.update(settings)
    if steps is not None:
        overrides["total_steps"] = steps
    name = preset or experiment.train_preset
    with user_input(f"--preset {name} --set", ConfigError, ValueError, TypeError):
        build(name, **overrides)
    return {"train_preset": name, "train_overrides": tuple(overrides.items())}


def _metrics(experiment: Experiment, names: list[str]) -> tuple[str, ...]:
    """The experiment's weight-free metrics (always computed: the report reads them) plus the weight-based ones
    named; a name the experiment does not know is refused."""
    known = dict.fromkeys((*experiment.metrics, *WEIGHT_METRICS))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(f"--metrics: experiment {experiment.name!r} has no metric {', '.join(unknown)}; choose from "
                        f"{' '.join(known)}")
    free = tuple(name for name in experiment.metrics if name not in WEIGHT_METRICS)
    return free + tuple(name for name in WEIGHT_METRICS if name in names)


def modify(experiment: Experiment, *, data: str | Path | None = None, test: str | Path | None = None,
           corruption: str | None = None, parameters: dict | None = None, clean_fraction: float | None = None,
           resolution_px: int | None = None, preset: str | None = None, settings: dict | None = None,
           steps: int | None = None, samples: int | None = None, arms: list[str] | None = None,
           metrics: list[str] | None = None, train_count: int | None = None, test_count: int | None = None,
           embedded: str | None = None, arm_threads: int | None = None) -> Experiment:
    """The experiment with these changes (None / empty: unchanged). data / test: the user's clean training and
    held-out images (EDM2 folder / zip / .npz); given to an embedded experiment they replace its crops, at their own
    resolution (resolution_px, when given, must match them). embedded: which embedded images the crops come from
    ("photographs" or "textures", embedded_data.EMBEDDED_SETS). arm_threads: CPU threads per arm (0: torch's
    default; Experiment.arm_threads)."""
    data_setting = {}
    user_data = experiment.data.source == "path" or data is not None or test is not None
    if (data is None) != (test is None):
        raise UserError("give both --data (clean training images) and --test (held-out images), or neither")
    if experiment.data.source == "path" and data is None:
        raise UserError(f"experiment {experiment.name!r} reads your data: give --data (the clean training set, an "
                        "EDM2 folder / zip / .npz) and --test (its held-out set)")
    if resolution_px is not None and not user_data and not 4 <= resolution_px <= EMBEDDED_MAX_PX:
        raise UserError(f"--resolution {resolution_px}: the embedded crops are 4 to {EMBEDDED_MAX_PX} px")
    if resolution_px is not None and resolution_px < 1:
        raise UserError(f"--resolution must be >= 1 px, got {resolution_px}")
    if data is not None and experiment.data.source == "embedded":
        # The user's images replace the crops, at their own resolution unless --resolution says which to expect.
        data_setting.update(source="path", train_count=None, test_count=None, resolution_px=resolution_px)
    elif resolution_px is not None:  # embedded: the crop size; the user's data: checked against it when loaded
        data_setting["resolution_px"] = resolution_px
    for option, value, field in (("--train-count", train_count, "train_count"),
                                 ("--test-count", test_count, "test_count")):
        if value is None:
            continue
        if user_data:
            raise UserError(f"{option}: experiment {experiment.name!r} runs on your data (--data / --test); its "
                            "counts are those of your files")
        if value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
        data_setting[field] = value
    if embedded is not None:
        if user_data:
            raise UserError(f"--embedded: experiment {experiment.name!r} runs on your data (--data / --test), not on "
                            "embedded crops")
        if experiment.data.out_of_distribution:  # its classes index the photographs
            raise UserError(f"--embedded: experiment {experiment.name!r} is out-of-distribution, its classes are "
                            "photographs; choose a corruption experiment")
        data_setting["embedded"] = embedded
    if clean_fraction is not None:
        if not 0 < clean_fraction < 1:
            raise UserError(f"--clean-fraction must lie in (0, 1) (some clean and some other images), got "
                            f"{clean_fraction}")
        data_setting["clean_fraction"] = clean_fraction
    if corruption is not None or parameters:
        data_setting.update(_corruption(experiment, corruption, dict(parameters or {})))
    fields = {}
    if data_setting:
        fields["data"] = replace(experiment.data, **data_setting)
    if preset is not None or settings or steps is not None:
        if steps is not None and steps < 1:
            raise UserError(f"--steps must be >= 1, got {steps}")
        fields.update(_train_settings(experiment, preset, dict(settings or {}), steps))
    if samples is not None:
        if samples < 2:
            raise UserError(f"--samples must be >= 2 (the metrics compare distributions), got {samples}")
        fields["generated_count"] = samples
    if arms:
        names = [arm.name for arm in experiment.arms]
        unknown = [name for name in arms if name not in names]
        if unknown:
            raise UserError(f"--arms: experiment {experiment.name!r} has no arm {', '.join(unknown)}; choose from "
                            f"{' '.join(names)}")
        fields["arms"] = tuple(arm for arm in experiment.arms if arm.name in arms)
    if metrics:
        fields["metrics"] = _metrics(experiment, metrics)
    if arm_threads is not None:
        if arm_threads < 0:
            raise UserError(f"--arm-threads must be >= 0 (0: torch's default thread count), got {arm_threads}")
        if arm_threads != experiment.arm_threads:
            fields["arm_threads"] = arm_threads
    if not fields:
        return experiment
    with user_input(f"experiment {experiment.name}"):  # Experiment / DataSetting checks (e.g. crops' denoiser arm)
        changed = replace(experiment, **fields)
    listed = changes(changed)
    if data is not None:
        listed["data"] = f"{data} (test {test})"
    summary = ", ".join(f"{key} = {value}" for key, value in listed.items())
    return replace(changed, description=f"{experiment.description} [MODIFIED: {summary}]")


def _plain(value):
    """A JSON-friendly copy: arms by name, dataclasses as dicts, tuples as lists."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return value.name if hasattr(value, "kind") else {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    return value


def changes(experiment: Experiment) -> dict:
    """{field: new value} where the experiment differs from the registered one of its name (a sub-field of a
    setting as "data.clean_fraction"); empty for an unchanged or unregistered experiment. The description is left
    out (it only repeats the changes)."""
    base = EXPERIMENTS.get(experiment.name)
    if base is None:
        return {}
    found = {}
    for field in dataclasses.fields(Experiment):
        old, new = getattr(base, field.name), getattr(experiment, field.name)
        if field.name == "description" or old == new:
            continue
        if dataclasses.is_dataclass(new) and not hasattr(new, "kind"):
            for sub in dataclasses.fields(new):
                if getattr(old, sub.name) != getattr(new, sub.name):
                    found[f"{field.name}.{sub.name}"] = _plain(getattr(new, sub.name))
        else:
            found[field.name] = _plain(new)
    return found


def parse_parameter(text: str) -> tuple[str, float]:
    """A corruption parameter NAME=NUMBER of --param (an int when it is one)."""
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        sep = ""
    if not sep:
        raise UserError(f"--param takes NAME=NUMBER (e.g. sigma_px=1.0), got {text!r}")
    return name, int(number) if number.is_integer() else number


def from_arguments(experiment: Experiment, args) -> Experiment:
    """modify() with the options of `ambient-fast experiment` (experiments/cli.py)."""
    from ..train.cli import _parse_value

    settings = {}
    for item in args.set or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--set expects FIELD=VALUE (e.g. --set total_steps=500), got {item!r}")
        settings[name.strip()] = _parse_value(value)
    parameters = dict(parse_parameter(p) for p in args.param or ())
    return modify(experiment, data=args.data, test=args.test, corruption=args.corruption, parameters=parameters,
                  clean_fraction=args.clean_fraction, resolution_px=args.resolution, preset=args.preset,
                  settings=settings, steps=args.steps, samples=args.samples, arms=args.arms, metrics=args.metrics,
                  train_count=args.train_count, test_count=args.test_count, embedded=args.embedded,
                  arm_threads=args.arm_threads)
