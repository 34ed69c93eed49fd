"""Seeded construction: a network initialised from its own seed, leaving the caller's global generator alone
(the public reference reseeds the global RNG: DESIGN.md pitfall 7)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def seeded(seed: int, build: Callable[[], ModuleT]) -> ModuleT:
    """build() with torch's CPU generator set to `seed` inside a fork: initialisation depends on `seed` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
