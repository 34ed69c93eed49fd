"""Power-function EMA and post-hoc EMA reconstruction (Karras et al. 2024, EDM2, Section 3 and Appendix C).

The power-function EMA with exponent gamma averages the parameter trajectory with weights proportional to
tau^gamma over tau in [0, t]: beta_t = (1 - 1/t)^(gamma + 1) (EDM2 eq. 3). It is parametrised by its relative
standard deviation sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (EDM2 eq. 4).

Post-hoc reconstruction: snapshots of a few EMAs (gamma_i) stored at times t_i have averaging profiles
p_i(tau) = (gamma_i + 1) tau^gamma_i / t_i^(gamma_i + 1) on [0, t_i]. A requested profile p_r (any sigma_rel, any
end time) is approximated by sum_i x_i p_i with x minimising the L2 distance ||sum_i x_i p_i - p_r|| (EDM2
Appendix C.3), a least-squares problem whose Gram matrix has a closed form; the reconstructed weights are then
sum_i x_i theta_i.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq

SIGMA_REL_MAX = math.sqrt(1 / 12)  # sigma_rel at gamma = 0 (a uniform average)


def std_to_gamma(sigma_rel: float) -> float:
    """Solve sigma_rel^2 = (g + 1) / ((g + 2)^2 (g + 3)) for g >= 0 (EDM2 eq. 4); decreasing there, so one root."""
    if not 0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel must be in (0, {SIGMA_REL_MAX:.4f}) (gamma >= 0), got {sigma_rel}")
    return brentq(lambda g: (g + 1) / ((g + 2) ** 2 * (g + 3)) - sigma_rel**2, 0.0, 1e9, xtol=1e-12, rtol=1e-14)


def gamma_to_std(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class PowerEMA:
    """EMAs of a module's parameters for several sigma_rel at once, in float32 on the module's device."""

    def __init__(self, module: torch.nn.Module, stds=(0.05, 0.10)):
        self.stds = tuple(float(s) for s in stds)
        self.gammas = [std_to_gamma(s) for s in self.stds]
        self.averages = [{name: p.detach().float().clone() for name, p in module.state_dict().items()} for _ in self.stds]

    @torch.no_grad()
    def update(self, module: torch.nn.Module, *, step: int, skip: torch.Tensor | None = None) -> None:
        """After optimizer step number `step` (1-based: the t of beta_t = (1 - 1/t)^(gamma + 1)). skip: a float
        tensor of one element on the module's device, 1.0 when the optimizer step was skipped (non-finite
        gradients): the floating-point averages are then left as they are, decided on the device (no host read)."""
        state = module.state_dict()
        floating = [name for name, value in state.items() if value.is_floating_point()]
        values = [state[name].float() for name in floating]
        keep = None if skip is None else 1 - skip.reshape(()).float()  # 0.0 on a skipped step
        for gamma, average in zip(self.gammas, self.averages):
            beta = (1 - 1 / step) ** (gamma + 1)  # EDM2 eq. 3; beta_1 = 0 copies the weights
            targets = [average[name] for name in floating]
            if keep is None:
                torch._foreach_lerp_(targets, values, 1 - beta)  # one launch per group
            else:  # weight (1 - beta) (1 - skip): the same float32 weight as above when not skipped, so the same bits
                torch._foreach_lerp_(targets, values, [keep * (1 - beta)] * len(targets))
            for name, value in state.items():
                if not value.is_floating_point():
                    average[name].copy_(value)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat dict for safetensors: 'ema{std}.{name}'."""
        return {f"ema{std:.4f}.{name}": value for std, average in zip(self.stds, self.averages) for name, value in average.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for std, average in zip(self.stds, self.averages):
            for name in average:
                key = f"ema{std:.4f}.{name}"
                if key not in tensors:
                    raise KeyError(f"checkpoint lacks EMA tensor {key}")
                average[name].copy_(tensors[key])

    def state_for(self, std: float) -> dict[str, torch.Tensor]:
        for own, average in zip(self.stds, self.averages):
            if math.isclose(own, std, rel_tol=1e-6):
                return average
        raise KeyError(f"no EMA with std {std}; tracked: {self.stds}")


def _profile_dot(gamma_a, t_a, gamma_b, t_b) -> float:
    """<p_a, p_b> = integral of (g_a + 1)(g_b + 1) tau^(g_a + g_b) / (t_a^(g_a+1) t_b^(g_b+1)) over [0, min(t_a, t_b)],
    written with ratios m / t <= 1 so large t and gamma do not overflow."""
    m = min(t_a, t_b)
    return (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1) * (m / t_a) ** (gamma_a + 1) * (m / t_b) ** (gamma_b + 1) / m


def posthoc_coefficients(snapshots: list[tuple[float, float]], target_std: float, target_step: float) -> np.ndarray:
    """x minimising || sum_i x_i p_(gamma_i, t_i) - p_(gamma_r, t_r) || for snapshots [(sigma_rel_i, t_i)]."""
    if not snapshots:
        raise ValueError("no EMA snapshots to reconstruct from")
    profiles = [(std_to_gamma(std), float(t)) for std, t in snapshots]
    target = (std_to_gamma(target_std), float(target_step))
    gram = np.array([[_profile_dot(*a, *b) for b in profiles] for a in profiles])
    rhs = np.array([_profile_dot(*a, *target) for a in profiles])
    return np.linalg.lstsq(gram, rhs, rcond=1e-12)[0]


def reconstruct(snapshots: list[tuple[float, float, dict[str, torch.Tensor]]], target_std: float,
                target_step: float | None = None) -> dict[str, torch.Tensor]:
    """Weights of the requested EMA from [(sigma_rel_i, step_i, state_i)]; target_step defaults to the last snapshot."""
    target_step = target_step if target_step is not None else max(t for _, t, _ in snapshots)
    x = posthoc_coefficients([(s, t) for s, t, _ in snapshots], target_std, target_step)
    names = snapshots[0][2].keys()
    out = {}
    for name in names:
        first = snapshots[0][2][name]
        if not first.is_floating_point():
            out[name] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for coefficient, (_, _, state) in zip(x, snapshots):
            acc += float(coefficient) * state[name].double()
        out[name] = acc.to(first.dtype)
    return out
