"""Denoiser networks: a compact EDM-style UNet (unet.py), the EDM2 magnitude-preserving UNet (edm2.py), a
text-conditioned MicroDiT-style transformer (dit*.py), and the preconditioning wrapper every network plugs into
(precond.py)."""
from __future__ import annotations

from .dit import DiT
from .dit_presets import DIT_PRESETS
from .edm2 import EDM2_IMG512, EDM2UNet
from .precond import Precond
from .seeded import seeded
from .unet import UNet, UNetEncoder

__all__ = ["DIT_PRESETS", "DiT", "EDM2UNet", "EDM2_IMG512", "Precond", "UNet", "UNetEncoder", "seeded"]
