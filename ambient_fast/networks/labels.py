"""Class labels as the vectors a network embeds: integer labels [B] become one-hot rows, float labels [B, label_dim]
(one-hot, soft, or the zero vector of a dropped condition) pass through. One helper for the UNet, EDM2 and the DiT.

One-hot by scatter, not F.one_hot: F.one_hot checks the labels' range by reading their min and max on the host (on
a CPU), a device-to-host read in every class-conditional training step; scatter checks its indices inside the
kernel (an index error on the CPU, a device-side assert on a GPU)."""
from __future__ import annotations

import torch


def label_vectors(class_labels: torch.Tensor, label_dim: int, *, dtype: torch.dtype) -> torch.Tensor:
    """float [B, label_dim] in `dtype` from int labels [B] (one-hot) or float labels [B, label_dim] (as they are)."""
    if class_labels.dim() == 1 and not class_labels.is_floating_point():
        index = class_labels.long().view(-1, 1)
        return torch.zeros(class_labels.shape[0], label_dim, dtype=dtype, device=class_labels.device).scatter(1, index, 1.0)
    if class_labels.dim() == 2 and class_labels.shape[1] == label_dim:
        return class_labels.to(dtype)
    raise ValueError(f"class_labels must be int [B] or float [B, {label_dim}], got shape {tuple(class_labels.shape)} "
                     f"of {class_labels.dtype}")
