"""Every activation's forward and backward against an independent formula, and its gain."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from initsweep.activations import gaussian_expectation, get_activation, list_activations

X = torch.linspace(-4, 4, 97, dtype=torch.float64)
sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
REFERENCE = {
    "identity": lambda x: x,
    "sigmoid": sig,
    "tanh": math.tanh,
    "relu": lambda x: max(0.0, x),
    "leaky_relu": lambda x: x if x > 0 else 0.01 * x,
    "elu": lambda x: x if x > 0 else math.exp(x) - 1,
    "selu": lambda x: 1.0507009873554805 * (x if x > 0 else 1.6732632423543772 * (math.exp(x) - 1)),
    "gelu": lambda x: x * 0.5 * (1 + math.erf(x / math.sqrt(2))),
    "silu": lambda x: x * sig(x),
    "softplus": lambda x: math.log1p(math.exp(x)),
    "softsign": lambda x: x / (1 + abs(x)),
    "mish": lambda x: x * math.tanh(math.log1p(math.exp(x))),
    "hardtanh": lambda x: min(1.0, max(-1.0, x)),
}


def module(name, **params):
    return get_activation(name).build(get_activation(name).resolve(params))


def test_every_registered_activation_has_a_reference():
    assert {a.name for a in list_activations()} == set(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_forward_matches_formula(name):
    y = module(name)(X)
    expected = torch.tensor([REFERENCE[name](float(x)) for x in X], dtype=torch.float64)
    assert torch.allclose(y, expected, atol=1e-9)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_backward_matches_finite_differences(name):
    # keep away from the kinks (0, +-1) where the derivative is not defined
    x = torch.tensor([-3.1, -1.7, -0.6, -0.2, 0.3, 0.7, 1.4, 2.9], dtype=torch.float64, requires_grad=True)
    module(name)(x).sum().backward()
    h = 1e-6
    numeric = [(REFERENCE[name](float(v) + h) - REFERENCE[name](float(v) - h)) / (2 * h) for v in x.detach()]
    assert torch.allclose(x.grad, torch.tensor(numeric, dtype=torch.float64), atol=1e-6)


def test_parameters_change_the_function():
    assert module("leaky_relu", negative_slope=0.2)(torch.tensor([-1.0])).item() == pytest.approx(-0.2)
    assert module("elu", alpha=0.5)(torch.tensor([-50.0])).item() == pytest.approx(-0.5)
    assert module("hardtanh", min_val=-2.0, max_val=3.0)(torch.tensor([5.0])).item() == 3.0
    with pytest.raises(ValueError, match="max_val"):
        get_activation("hardtanh").resolve({"min_val": 1.0, "max_val": 0.0})
    with pytest.raises(ValueError, match="did you mean 'leaky_relu'"):
        get_activation("leaky_rleu")


@pytest.mark.parametrize("name,params,gain", [
    ("identity", {}, 1.0),
    ("sigmoid", {}, 1.0),
    ("tanh", {}, 5 / 3),
    ("relu", {}, math.sqrt(2)),
    ("leaky_relu", {"negative_slope": 0.2}, math.sqrt(2 / (1 + 0.04))),
    ("selu", {}, 0.75),
])
def test_gains_follow_calculate_gain(name, params, gain):
    entry = get_activation(name)
    assert entry.gain(get_activation(name).resolve(params)) == pytest.approx(gain)


@pytest.mark.parametrize("name", ["elu", "gelu", "silu", "softplus", "softsign", "mish", "hardtanh"])
def test_second_moment_gain_keeps_unit_second_moment(name):
    """For activations calculate_gain does not know: E[(gain * phi(z))^2] = 1, checked by Monte Carlo."""
    entry = get_activation(name)
    params = get_activation(name).resolve({})
    gain = entry.gain(params)
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    second_moment = (gain * entry.build(params)(z)).pow(2).mean().item()
    assert second_moment == pytest.approx(1.0, rel=5e-3)


def test_gaussian_expectation_matches_closed_forms():
    relu = get_activation("relu")
    # E[relu(sqrt(q) z)^2] = q / 2
    assert gaussian_expectation(relu, {}, lambda y: y**2, q=3.0) == pytest.approx(1.5, rel=1e-3)
    ident = get_activation("identity")
    assert gaussian_expectation(ident, {}, lambda y: y**4, q=2.0) == pytest.approx(3 * 4.0, rel=1e-9)


def test_gaussian_expectation_is_exact_across_kinks():
    # E[hardtanh(z)^2] = P(|z| < 1) - 2 phi(1) + P(|z| > 1), in closed form
    inner = math.erf(1 / math.sqrt(2)) - 2 * math.exp(-0.5) / math.sqrt(2 * math.pi)
    exact = inner + 1 - math.erf(1 / math.sqrt(2))
    hardtanh = get_activation("hardtanh")
    assert gaussian_expectation(hardtanh, {"min_val": -1.0, "max_val": 1.0}, lambda y: y**2, q=1.0) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("q", [0.3, 0.7, 2.0])
def test_gaussian_expectation_error_when_the_kinks_fall_between_nodes(q):
    """The documented accuracy: a few 1e-6 relative for hardtanh at any variance."""
    a = 1 / math.sqrt(q)
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    exact = q * (math.erf(a / math.sqrt(2)) - 2 * a * phi) + 1 - math.erf(a / math.sqrt(2))
    got = gaussian_expectation(get_activation("hardtanh"), {"min_val": -1.0, "max_val": 1.0}, lambda y: y**2, q=q)
    assert got == pytest.approx(exact, rel=1e-5)


def test_activation_entries_pickle_as_themselves():
    # a validated config.Choice carries its entry to pool workers by pickle; the factory is a
    # lambda, so the entry travels by name and arrives as the registry's own
    entry = get_activation("leaky_relu")
    assert pickle.loads(pickle.dumps(entry)) is entry
