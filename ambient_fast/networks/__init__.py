"""Denoiser networks: a compact EDM-style UNet (unet.py), the EDM2 magnitude-preserving UNet (edm2.py), a
text-conditioned MicroDiT-style transformer (dit*.py), the preconditioning wrapper every network plugs into
(precond.py), and its rectified-flow counterpart (velocity.py)."""
from __future__ import annotations

from .dit import DiT
from .dit_presets import DIT_PRESETS
from .edm2 import EDM2_IMG512, EDM2UNet
from .precond import Precond
from .seeded import seeded
from .unet import UNet, UNetEncoder
from .velocity import Velocity

__all__ = ["DIT_PRESETS", "DiT", "EDM2UNet", "EDM2_IMG512", "Precond", "UNet", "UNetEncoder", "Velocity", "seeded"]
