"""The network protocol and the EDM preconditioning wrapper.

Any nn.Module plugs into the trainer and the sampler if it follows this protocol:

    forward(x_in, c_noise, class_labels=None) -> F            or  -> (F, logvar)

x_in = c_in(sigma) * x_t [B, C, H, W], c_noise = ln(sigma) / 4 [B], class_labels int64 [B] (or None); F has the
shape of x_in; logvar [B] (or [B, 1, ...]) is the EDM2 learned log-variance u(sigma) (optional). Precond applies
c_in / c_noise (Karras et al. 2022, Table 1) and returns the raw F for the fused loss `ambient_loss_precond`,
which forms D = c_skip x_t + c_out F inside its kernel; `denoise` forms D explicitly for sampling.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import precond


class Precond(nn.Module):
    def __init__(self, net: nn.Module, *, sigma_data: float = precond.SIGMA_DATA, label_dim: int = 0):
        super().__init__()
        self.net, self.sigma_data, self.label_dim = net, sigma_data, label_dim

    def raw(self, x_t: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None, **extra):
        """(F, logvar or None) for inputs x_t at levels sigma [B] (data units); `extra` goes to the network (the
        DiT's caption, caption_mask, keep)."""
        sigma = sigma.reshape(-1).to(torch.float32)
        x_in = precond.c_in(sigma, self.sigma_data).view(-1, *[1] * (x_t.dim() - 1)) * x_t.to(torch.float32)
        out = self.net(x_in, precond.c_noise(sigma), class_labels if self.label_dim else None, **extra)
        if isinstance(out, tuple):
            raw, logvar = out
            return raw, logvar.reshape(-1)
        return out, None

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                **extra) -> torch.Tensor:
        """The denoiser D(x_t, sigma) = c_skip x_t + c_out F(c_in x_t, c_noise), in float32 (`extra`: as raw)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        raw, _ = self.raw(x_t, sigma, class_labels, **extra)
        view = (-1, *[1] * (x_t.dim() - 1))
        return precond.c_skip(sigma, self.sigma_data).view(view) * x_t.float() + precond.c_out(sigma, self.sigma_data).view(view) * raw.float()
