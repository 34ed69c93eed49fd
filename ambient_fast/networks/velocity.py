"""The rectified-flow wrapper: a network of the library's protocol (precond.py) as a velocity field v(z_t, t).

Rectified flow trains on z_t = (1 - t) x0 + t eps and predicts v = eps - x0 (docs/flow.md). The wrapped network
sees z_t as it is (no c_in: z_t already has a variance between that of the data and 1) and the time as
c_noise = ln(t / (1 - t)) / 4 = ln(sigma) / 4, the logit of t, which is EDM's c_noise of the matching VE level
sigma = t / (1 - t): the network's noise embedding (Fourier features of c_noise) covers the same range under both
objectives (the sampler's t = 1, pure noise, is conditioned as t = 1 - 1e-6). Its output is v itself (no c_skip /
c_out); an EDM2 learned log-variance head, if present, is unused.
"""
from __future__ import annotations

import torch
from torch import nn


T_EDGE = 1e-6  # t is clamped to [T_EDGE, 1 - T_EDGE] for the conditioning only: |ln sigma| <= 13.8, finite


class Velocity(nn.Module):
    def __init__(self, net: nn.Module, *, label_dim: int = 0):
        super().__init__()
        self.net, self.label_dim = net, label_dim

    def raw(self, z_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
            **extra) -> torch.Tensor:
        """v for inputs z_t [B, ...] at rectified-flow times t [B] in (0, 1); `extra` goes to the network (the DiT's
        caption, caption_mask, keep)."""
        t = t.reshape(-1).to(torch.float32).clamp(T_EDGE, 1 - T_EDGE)  # finite at the ends (t = 1: pure noise)
        c_noise = (torch.log(t) - torch.log1p(-t)) / 4  # logit(t) / 4 = ln(sigma) / 4, sigma = t / (1 - t)
        out = self.net(z_t.to(torch.float32), c_noise, class_labels if self.label_dim else None, **extra)
        return out[0] if isinstance(out, tuple) else out  # an EDM2 (F, logvar): the log-variance is not used

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None,
                **extra) -> torch.Tensor:
        """v(z_t, t) in float32, for flow_sampling.flow_sample (t: [B] or a scalar; `extra`: as raw)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=z_t.device).reshape(-1).expand(z_t.shape[0])
        return self.raw(z_t, t, class_labels, **extra).float()
