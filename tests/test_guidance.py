"""Classifier-free guidance with captions (sampling.classifier_free) in the EDM and the flow Heun samplers, and the
null condition it shares with condition dropout (train/condition_dropout.py), on a tiny randomised DiT.

The references call the network once per condition (B samples each, float32 as the library's networks compute) and
do everything after the network in float64: the mix D(null) + w (D(c) - D(null)) and the Heun steps."""
from __future__ import annotations

import pytest
import torch
from test_networks_dit import randomise

from ambient_fast.flow_sampling import flow_sample, flow_times
from ambient_fast.networks import DiT, Precond, Velocity
from ambient_fast.sampling import classifier_free, edm_sigmas, heun_sample
from ambient_fast.train.condition_dropout import drop_conditions, dropped_samples

LABELS, WIDTH, TOKENS = 3, 5, 4


def model(objective):
    torch.manual_seed(0)
    net = randomise(DiT(3, 8, size="dit-tiny", label_dim=LABELS, caption_dim=WIDTH)).eval()
    return Velocity(net, label_dim=LABELS) if objective == "flow" else Precond(net, label_dim=LABELS)


def prompts(batch=3, seed=0):
    """(noise, labels, condition): random captions, the last token of sample 0 padding."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 3, 8, 8, generator=generator)
    labels = torch.randint(0, LABELS, (batch,), generator=generator)
    mask = torch.ones(batch, TOKENS, dtype=torch.bool)
    mask[0, -1] = False
    return noise, labels, {"caption": torch.randn(batch, TOKENS, WIDTH, generator=generator), "caption_mask": mask}


def null_of(labels, condition):
    """The null condition written out: zero label vectors, no real caption token."""
    empty = torch.zeros_like(condition["caption_mask"])
    return torch.zeros(labels.shape[0], LABELS), {**condition, "caption_mask": empty}


def mixed(f, x, level, labels, condition, w):
    """float64 D(x; null) + w (D(x; c) - D(x; null)) from two separate network calls."""
    with torch.no_grad():
        conditional = f(x, level, labels, **condition).double()
        null_labels, null_condition = null_of(labels, condition)
        null = f(x, level, null_labels, **null_condition).double()
    return null + w * (conditional - null)


def test_the_null_condition_drops_exactly_the_chosen_samples():
    _, labels, condition = prompts(batch=4)
    drop = torch.tensor([False, True, False, True])
    got_labels, got = drop_conditions(labels, condition, drop, label_dim=LABELS)
    torch.testing.assert_close(got_labels, torch.nn.functional.one_hot(labels, LABELS).float() * (~drop)[:, None])
    assert torch.equal(got["caption_mask"], condition["caption_mask"] & ~drop[:, None])
    assert got["caption"] is condition["caption"]
    _, no_mask = drop_conditions(None, {"caption": condition["caption"]}, drop, label_dim=0)
    assert no_mask["caption_mask"].tolist() == [[not d] * TOKENS for d in drop.tolist()]
    draws = dropped_samples(4000, probability=0.25, seed=7, device=torch.device("cpu"))
    assert torch.equal(draws, dropped_samples(4000, probability=0.25, seed=7, device=torch.device("cpu")))
    assert 0.22 < draws.float().mean() < 0.28 and not dropped_samples(50, probability=0.0, seed=7, device="cpu").any()


def test_the_dit_at_the_null_caption_ignores_the_caption_values():
    """An empty caption (mask all False) is gated off: the output equals that without any caption, whatever the
    embedding values, so dropping the mask alone is a complete null condition."""
    f = model("edm")
    x, labels, condition = prompts()
    level = torch.tensor([0.3, 1.0, 4.0])
    _, null = null_of(labels, condition)
    with torch.no_grad():
        without = f(x, level, labels)
        empty = f(x, level, labels, **null)
        other = f(x, level, labels, caption=torch.randn_like(condition["caption"]) * 5,
                  caption_mask=null["caption_mask"])
        given = f(x, level, labels, **condition)
    assert torch.equal(empty, without) and torch.equal(other, without)
    assert (given - without).abs().max() > 1e-3  # the caption reaches the output


@pytest.mark.parametrize("objective", ["edm", "flow"])
@pytest.mark.parametrize("w", [0.0, 2.5])
def test_one_guided_call_is_the_float64_mix_of_two_calls(objective, w):
    """One forward of 2B (conditional and null halves) equals the float64 mix of two separate forwards."""
    f = model(objective)
    x, labels, condition = prompts(seed=1)
    level = torch.tensor([0.2, 0.5, 0.9]) if objective == "flow" else torch.tensor([0.05, 1.0, 20.0])
    with torch.no_grad():
        got = classifier_free(f, guidance=w, label_dim=LABELS)(x, level, labels, **condition)
    expected = mixed(f, x, level, labels, condition, w)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def heun(x, grid, derivative):
    """Heun's method in float64 down a decreasing grid ending at 0 (EDM Algorithm 1 without churn): an Euler step
    to the next level, then the trapezoid correction with the derivative there, except on the last step to 0."""
    for level, level_next in zip(grid[:-1], grid[1:]):
        slope = derivative(x, level)
        x_next = x + (level_next - level) * slope
        if level_next > 0:
            x_next = x + (level_next - level) * 0.5 * (slope + derivative(x_next, level_next))
        x = x_next
    return x


def edm_reference(f, noise, labels, condition, w, steps):
    """EDM sampling in float64 with the guided denoiser of two separate calls: dx/dsigma = (x - D(x, sigma)) / sigma."""
    sigmas = edm_sigmas(steps).tolist()

    def slope(x, s):
        return (x - mixed(f, x.float(), torch.full((x.shape[0],), s), labels, condition, w)) / s

    return heun(noise.double() * sigmas[0], sigmas, slope)


def flow_reference(f, noise, labels, condition, w, steps):
    """Rectified-flow sampling in float64 with the guided velocity of two separate calls: dz/dt = v(z, t)."""
    times = flow_times(steps).tolist()

    def velocity(z, t):
        return mixed(f, z.float(), torch.full((z.shape[0],), t), labels, condition, w)

    return heun(noise.double() * times[0], times, velocity)


def guided_sample(objective, f, noise, labels, condition, w, steps):
    guided = classifier_free(f, guidance=w, label_dim=LABELS)
    if objective == "flow":
        return flow_sample(guided, noise, num_steps=steps, class_labels=labels, condition=condition)
    return heun_sample(guided, noise, class_labels=labels, num_steps=steps, condition=condition)


@pytest.mark.parametrize("objective", ["edm", "flow"])
def test_the_guided_sampler_follows_the_float64_reference_and_w_1_is_the_unguided_sampler(objective):
    f, steps = model(objective), 3
    noise, labels, condition = prompts(seed=2)
    reference = flow_reference if objective == "flow" else edm_reference
    guided = guided_sample(objective, f, noise, labels, condition, 3.0, steps)
    torch.testing.assert_close(guided.double(), reference(f, noise, labels, condition, 3.0, steps).float().double(),
                               rtol=1e-4, atol=1e-4)
    unguided = (flow_sample(f, noise, num_steps=steps, class_labels=labels, condition=condition)
                if objective == "flow" else heun_sample(f, noise, class_labels=labels, num_steps=steps,
                                                        condition=condition))
    assert torch.equal(guided_sample(objective, f, noise, labels, condition, 1.0, steps), unguided)
    assert (guided - unguided).abs().max() > 1e-2  # guidance changes the samples
    null_labels, null = null_of(labels, condition)  # w = 0: the sampler at the null condition
    unconditional = guided_sample(objective, f, noise, null_labels, null, 1.0, steps)
    torch.testing.assert_close(guided_sample(objective, f, noise, labels, condition, 0.0, steps), unconditional,
                               rtol=1e-4, atol=1e-4)
