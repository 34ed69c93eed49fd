"""Feed-forward layers of the DiT blocks: a dense SwiGLU and an expert-choice mixture of experts.

Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing"; the MoE layer of
MicroDiT, Sehwag et al. 2024): per sample, router probabilities P = softmax(x W_g) [T, E] over the E experts; each
expert e takes the k = capacity * T / E tokens with the highest P[:, e] (so every expert is equally loaded and no
auxiliary balancing loss is needed), and

    y_t = sum over experts e that chose t of P[t, e] * FFN_e(x_t),    FFN_e(x) = GELU(x W1_e) W2_e.

A token is processed by 0..E experts; its weights P[t, e] over those experts sum to at most 1, exactly 1 when
every expert takes every token (capacity = E). In all E * k (expert, token) slots are filled.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SwiGLU(nn.Module):
    """w3(silu(x w1) * (x w2)) (Shazeer 2020), w1 and w2 fused into one matrix; no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class ExpertChoiceMoE(nn.Module):
    def __init__(self, dim: int, hidden: int, *, num_experts: int, capacity: float):
        super().__init__()
        if num_experts < 1 or capacity <= 0:
            raise ValueError(f"need num_experts >= 1 and capacity > 0, got {num_experts} and {capacity}")
        self.num_experts, self.capacity = num_experts, capacity
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        for weight in (self.w1, self.w2):
            nn.init.trunc_normal_(weight, std=0.02)

    def tokens_per_expert(self, tokens: int) -> int:
        """k = capacity * T / E, within [1, T] (T is static under torch.compile: the mask ratio fixes it)."""
        return max(1, min(tokens, int(self.capacity * tokens / self.num_experts)))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights P[t, e] of the chosen tokens [B, E, k] in float32, their token indices [B, E, k])."""
        probs = self.gate(x).float().softmax(dim=-1)  # router probabilities over experts, per token
        return probs.transpose(1, 2).topk(self.tokens_per_expert(x.shape[1]), dim=-1)  # each expert picks tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        weight, index = self.route(x)
        slots = index.flatten(1).unsqueeze(-1).expand(-1, -1, dim)  # [B, E * k, D]
        chosen = x.gather(1, slots).unflatten(1, (self.num_experts, -1))  # [B, E, k, D]
        hidden = F.gelu(torch.einsum("bekd,edf->bekf", chosen, self.w1.to(chosen.dtype)))
        out = torch.einsum("bekf,efd->bekd", hidden, self.w2.to(hidden.dtype)) * weight.unsqueeze(-1).to(hidden.dtype)
        return x.new_zeros(batch, tokens, dim).scatter_add(1, slots, out.flatten(1, 2).to(x.dtype))
