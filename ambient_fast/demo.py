"""`make demo`: the foundation at work on generated data, offline.

One ambient training step's data path: annotations (sigma_min per sample) -> the level to train against at each
drawn sigma_t (the buffer of eq. D.2) -> the training pair (x_t, x_tn) with the fixed per-sample noise -> the
ambient loss with EDM preconditioning and its gradient, on every backend available here, compared with the
float64 reference, and timed. (The full controlled experiment replaces this once the trainer lands.)
"""
from __future__ import annotations

import os
import time

import torch

import ambient_fast
from ambient_fast import _backend
from ambient_fast.info import describe
from ambient_fast.reference import ambient_loss_precond_reference


def _time(function, repeats: int = 5) -> float:
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    batch, shape = 16, (3, 64, 64)
    images = torch.randn(batch, *shape, generator=generator) * 0.5
    sample_ids = torch.arange(batch) * 1009
    # Annotations: 4 clean samples (sigma_min = 0), the rest corrupted with sigma_min in [0.2, 2].
    sigma_min = torch.cat([torch.zeros(4), torch.rand(batch - 4, generator=generator) * 1.8 + 0.2])
    sigma_t = torch.exp(torch.randn(batch, generator=generator) * 1.2 - 1.2)  # EDM's log-normal
    sigma_tn, usable = ambient_fast.select_sigma_tn(sigma_t, sigma_min)  # Section 3.2 with the eq. D.2 buffer
    print("\n".join(describe()))
    print(f"batch of {batch}: {int(usable.sum())} usable at their drawn sigma_t, "
          f"{int((usable & (sigma_tn > 0)).sum())} of them as noisy data (sigma_tn = sigma_min)")
    # Samples that are not usable at their level are resampled by the trainer; here we simply raise sigma_t.
    sigma_t = torch.where(usable, sigma_t, sigma_min * 1.5 + 1e-3)
    sigma_tn, usable = ambient_fast.select_sigma_tn(sigma_t, sigma_min)
    assert bool(usable.all())

    x_t, x_tn = ambient_fast.ambient_noising(images, sample_ids, sigma_t, sigma_tn, annotation_seed=7, seed=1)
    raw_output = torch.randn(batch, *shape, generator=generator)  # stands in for the network's output F

    reference_input = raw_output.double().requires_grad_()
    reference = ambient_loss_precond_reference(reference_input, x_t.double(), x_tn.double(), sigma_t.double(), sigma_tn.double()).mean()
    reference.backward()
    print(f"float64 reference loss {reference.item():.6f}")

    backends = ["eager"] + (["cpp"] if _backend.has_native() else []) + (["triton"] if _backend.triton_interpreted() and _backend.has_triton() else [])
    for backend in backends:
        os.environ[_backend.BACKEND_ENV] = backend
        leaf = raw_output.clone().requires_grad_()

        def step():
            leaf.grad = None
            ambient_fast.ambient_loss_precond(leaf, x_t, x_tn, sigma_t, sigma_tn, reduction="mean").backward()

        seconds = _time(step, repeats=2 if backend == "triton" else 10)
        loss = ambient_fast.ambient_loss_precond(leaf.detach(), x_t, x_tn, sigma_t, sigma_tn, reduction="mean")
        grad_error = (leaf.grad.double() - reference_input.grad).abs().max().item() / reference_input.grad.abs().max().item()
        print(f"  {backend:<7} loss {loss.item():.6f}  relative gradient error {grad_error:.1e}  "
              f"forward+backward {seconds * 1e3:8.2f} ms")
    os.environ.pop(_backend.BACKEND_ENV, None)


if __name__ == "__main__":
    main()
