"""The lean trainer: config and presets (config.py), the loop (loop.py), checkpoints (checkpoint.py), power EMA
with post-hoc reconstruction (phema.py), the EDM2 learning-rate schedule (schedule.py), torchrun set-up
(distributed.py) and the `train` / `generate` / `dataset` subcommands (cli.py)."""
from __future__ import annotations

from .config import PRESETS, NetworkConfig, TrainConfig, preset
from .loop import train

__all__ = ["PRESETS", "NetworkConfig", "TrainConfig", "preset", "train"]
