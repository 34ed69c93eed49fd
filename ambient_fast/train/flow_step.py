"""The rectified-flow training step (config.objective = "flow"): the same inputs as loop.TrainingStep, the levels
drawn in sigma by the same sigma-first ambient sampler, so one annotation file serves both objectives (docs/flow.md
section 7).

    t    = sigma_t / (1 + sigma_t)                      RF time of the VE level (docs/flow.md section 1)
    z_t  = (1 - t) x_t,  x_t = x_tn + sqrt(sigma_t^2 - sigma_tn^2) eps   (section 2: the law of (1 - t) x0 + t eps)
    v    = Velocity(net)(z_t, t)                        c_noise = logit(t) / 4 (networks/velocity.py)
    loss = flow_loss(v, z_t, x_tn, t, sigma_tn)         eq. 2.2 with lambda_amb = 1/alpha^2 (eq. D.1) and 1/t^2

At sigma_tn = 0 for every sample this is plain flow matching, mean |v - (eps - x0)|^2 (tests/test_train_flow.py).
"""
from __future__ import annotations

import torch

from .. import flow_loss
from ..networks.velocity import Velocity
from .step_parts import autocast_for, kept_patches, present


class FlowTrainingStep(torch.nn.Module):
    """Forward of one slice up to the loss (a module, so DDP and torch.compile see the whole computation)."""

    def __init__(self, velocity: Velocity, *, precision: str, autocast_dtypes: dict):
        super().__init__()
        self.velocity, self.precision, self.autocast_dtypes = velocity, precision, autocast_dtypes

    def forward(self, x_t, x_tn, sigma_t, sigma_tn, class_labels, caption=None, caption_mask=None, keep=None):
        t = sigma_t / (1 + sigma_t)  # float32 [B], in (0, 1) for the sampler's finite levels
        z_t = (1 - t).view(-1, *[1] * (x_t.dim() - 1)) * x_t
        extra = present(caption=caption, caption_mask=caption_mask, keep=keep)  # the DiT's keyword inputs
        with autocast_for(x_t.device.type, self.precision, self.autocast_dtypes):
            v = self.velocity.raw(z_t, t, class_labels, **extra)
        z_t, x_tn, scale = kept_patches(keep, self.velocity.net, z_t, x_tn)  # patch masking: kept patches only
        return flow_loss(v.float(), z_t, x_tn, t, sigma_tn, reduction="mean") * scale  # fused (ops/flow_loss.py)
