"""Every initializer's sampled statistics against its formula, written out independently here."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

from initsweep.inits import (
    fans, get_bias_init, get_init, init_bias_, init_weight_, initialize, list_inits,
)

CONV = (128, 64, 3, 3)  # fan_in = 576, fan_out = 1152, 73,728 weights
LINEAR = (512, 1024)  # fan_in = 1024, fan_out = 512
SQRT2 = math.sqrt(2.0)


def sample(name: str, shape, params=None, auto_gain: float = 1.0, seed: int = 0) -> torch.Tensor:
    w = torch.empty(shape)
    init_weight_(w, name, get_init(name).resolve(params or {}), auto_gain, torch.Generator().manual_seed(seed))
    return w


# name, params, shape, expected std written from the paper/tutorial formula
STD_CASES = [
    ("he", {}, CONV, math.sqrt(2 / 576)),
    ("he", {}, LINEAR, math.sqrt(2 / 1024)),
    ("he_as_written", {}, CONV, 2 / math.sqrt(576)),
    ("gaussian_inv_sqrt_n", {}, CONV, 1 / math.sqrt(576)),
    ("std_normal", {}, CONV, 1.0),
    ("uniform_inv_sqrt_n", {}, CONV, (1 / math.sqrt(576)) / math.sqrt(3)),
    ("lecun_normal", {}, LINEAR, 1 / math.sqrt(1024)),
    ("lecun_uniform", {}, LINEAR, 1 / math.sqrt(1024)),
    ("normal", {"std": 0.02, "mean": 0.5}, LINEAR, 0.02),
    ("uniform", {"a": -0.3, "b": 0.1}, LINEAR, 0.4 / math.sqrt(12)),
    ("xavier_uniform", {}, CONV, math.sqrt(2 / (576 + 1152))),
    ("xavier_normal", {"gain": 2.0}, LINEAR, 2.0 * math.sqrt(2 / (1024 + 512))),
    ("kaiming_normal", {}, CONV, SQRT2 / math.sqrt(576)),
    ("kaiming_normal", {"mode": "fan_out"}, CONV, SQRT2 / math.sqrt(1152)),
    ("kaiming_normal", {"nonlinearity": "tanh"}, LINEAR, (5 / 3) / math.sqrt(1024)),
    ("kaiming_normal", {"nonlinearity": "leaky_relu", "a": 0.2}, LINEAR, math.sqrt(2 / 1.04) / math.sqrt(1024)),
    ("kaiming_uniform", {}, CONV, SQRT2 / math.sqrt(576)),
    ("variance_scaling", {"scale": 1.76}, CONV, math.sqrt(1.76 / 576)),
    ("variance_scaling", {"scale": 2.0, "mode": "fan_avg", "distribution": "uniform"}, CONV, math.sqrt(2 / 864)),
    ("variance_scaling", {"scale": 1.0, "distribution": "truncated_normal"}, LINEAR, 1 / math.sqrt(1024)),
    ("orthogonal", {}, LINEAR, 1 / math.sqrt(1024)),
    ("pytorch_default", {}, CONV, (1 / math.sqrt(576)) / math.sqrt(3)),
]


@pytest.mark.parametrize("name,params,shape,std", STD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(STD_CASES)])
def test_std_matches_formula(name, params, shape, std):
    w = sample(name, shape, params)
    n = w.numel()
    # the sample std of n draws has a relative standard error of about 1/sqrt(2n) (< 0.3% here)
    assert w.std().item() == pytest.approx(std, rel=max(0.02, 6 / math.sqrt(2 * n)))
    expected_mean = params.get("mean", (params.get("a", 0) + params.get("b", 0)) / 2 if name == "uniform" else 0.0)
    assert w.mean().item() == pytest.approx(expected_mean, abs=6 * std / math.sqrt(n))


@pytest.mark.parametrize("entry", list_inits(), ids=lambda e: e.name)
def test_every_registered_init_matches_its_declared_moments(entry):
    """The moments the theory uses must be what the sampler draws, for every entry."""
    for shape in (CONV, LINEAR):
        params = get_init(entry.name).resolve({})
        w = sample(entry.name, shape, params, auto_gain=1.3)
        mean, var = entry.moments(shape, params, 1.3)
        assert w.mean().item() == pytest.approx(mean, abs=6 * math.sqrt(var / w.numel()) + 1e-12)
        assert w.var().item() == pytest.approx(var, rel=0.03, abs=1e-12)


@pytest.mark.parametrize("name,bound", [
    ("uniform_inv_sqrt_n", 1 / math.sqrt(576)),
    ("pytorch_default", 1 / math.sqrt(576)),
    ("lecun_uniform", math.sqrt(3 / 576)),
    ("kaiming_uniform", math.sqrt(6 / 576)),
    ("xavier_uniform", math.sqrt(6 / (576 + 1152))),
])
def test_uniform_bounds(name, bound):
    w = sample(name, CONV)
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound  # the support really reaches the bound


def test_pytorch_default_is_what_conv2d_does_on_its_own():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3)
    ours = sample("pytorch_default", conv.weight.shape)
    assert ours.abs().max().item() <= 1 / math.sqrt(576)
    assert ours.std().item() == pytest.approx(conv.weight.std().item(), rel=0.03)
    assert conv.bias.abs().max().item() <= 1 / math.sqrt(576)


def test_conv_fan_in_is_in_channels_times_kernel_area():
    assert fans(CONV) == (64 * 9, 128 * 9)
    assert fans((10, 3, 5, 5)) == (75, 250)
    for shape in [CONV, LINEAR, (7, 5, 1, 1), (4, 3, 2, 5)]:
        assert fans(shape) == nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))


def test_trunc_normal_stays_inside_and_has_truncated_variance():
    w = sample("trunc_normal", LINEAR, {"std": 1.0, "a": -1.0, "b": 2.0})
    assert w.min().item() >= -1.0 and w.max().item() <= 2.0
    # moments of N(0,1) truncated to [-1, 2], from the textbook formula
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = Phi(2) - Phi(-1)
    mean = (phi(-1) - phi(2)) / z
    var = 1 + (-1 * phi(-1) - 2 * phi(2)) / z - mean**2
    assert w.mean().item() == pytest.approx(mean, abs=0.01)
    assert w.var().item() == pytest.approx(var, rel=0.02)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (32, 16, 3, 3)])
def test_orthogonal_rows_or_columns_are_orthonormal(shape):
    gain = 1.7
    w = sample("orthogonal", shape, {"gain": gain}).reshape(shape[0], -1)
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    assert torch.allclose(gram, gain**2 * torch.eye(min(rows, cols)), atol=1e-4)


def test_delta_orthogonal_is_zero_but_an_orthogonal_centre_tap():
    w = sample("delta_orthogonal", (32, 16, 3, 3), {"gain": 2.0})
    centre = w[:, :, 1, 1]
    assert torch.allclose(centre.T @ centre, 4.0 * torch.eye(16), atol=1e-4)
    mask = torch.ones(3, 3, dtype=torch.bool)
    mask[1, 1] = False
    assert w[:, :, mask].abs().max().item() == 0.0
    # a delta-orthogonal conv preserves the norm of a signal that fits inside the image
    x = torch.randn(1, 16, 8, 8)
    y = nn.functional.conv2d(x, w / 2.0, padding=1)
    assert y.norm().item() == pytest.approx(x.norm().item(), rel=1e-4)


def test_gain_auto_and_nonlinearity_auto_take_the_activation_gain():
    tanh_gain = 5 / 3
    w = sample("xavier_normal", LINEAR, {"gain": "auto"}, auto_gain=tanh_gain)
    assert w.std().item() == pytest.approx(tanh_gain * math.sqrt(2 / 1536), rel=0.02)
    w = sample("kaiming_normal", LINEAR, {"nonlinearity": "auto"}, auto_gain=tanh_gain)
    assert w.std().item() == pytest.approx(tanh_gain / math.sqrt(1024), rel=0.02)


def test_same_generator_seed_same_weights_different_seed_different_weights():
    a, b, c = sample("he", CONV, seed=3), sample("he", CONV, seed=3), sample("he", CONV, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_zeros():
    assert sample("zeros", CONV).abs().max().item() == 0.0


def test_bias_inits():
    weight = torch.empty(CONV)
    bias = torch.empty(128 * 64)
    gen = torch.Generator().manual_seed(0)
    init_bias_(bias, weight, "normal", get_bias_init("normal").resolve({"std": math.sqrt(0.05)}), gen)
    assert bias.var().item() == pytest.approx(0.05, rel=0.05)
    init_bias_(bias, weight, "constant", get_bias_init("constant").resolve({"value": -3.0}), gen)
    assert torch.all(bias == -3.0)
    init_bias_(bias, weight, "pytorch_default", {}, gen)
    assert bias.abs().max().item() <= 1 / math.sqrt(576)


def test_initialize_applies_to_every_layer_head_included_and_zeroes_biases():
    model = nn.Sequential(nn.Conv2d(1, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.Flatten(), nn.Linear(4096, 512))
    initialize(model, init="he", init_params={}, auto_gain=SQRT2, generator=torch.Generator().manual_seed(0))
    for layer, fan_in in [(model[0], 9), (model[2], 576), (model[4], 4096)]:
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
        assert layer.bias.abs().max().item() == 0.0


def test_initialize_takes_registry_entries_as_it_takes_names():
    # a validated config.Choice hands its entry over; the weights are those of the name
    def fresh():
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    by_name, by_entry = fresh(), fresh()
    params = get_bias_init("uniform").resolve({"a": -0.2, "b": 0.3})
    initialize(by_name, init="he", init_params={}, auto_gain=SQRT2, bias="uniform", bias_params=params,
               generator=torch.Generator().manual_seed(3))
    initialize(by_entry, init=get_init("he"), init_params={}, auto_gain=SQRT2, bias=get_bias_init("uniform"),
               bias_params=params, generator=torch.Generator().manual_seed(3))
    for a, b in zip(by_name.parameters(), by_entry.parameters()):
        assert torch.equal(a, b)  # the same code on the same CPU: the same draws
    for layer in (by_entry[0], by_entry[2]):
        assert -0.2 <= layer.bias.min().item() < layer.bias.max().item() <= 0.3


def test_bias_inits_are_registry_entries():
    with pytest.raises(ValueError, match="unknown bias init 'nromal' — did you mean 'normal'"):
        get_bias_init("nromal")
    with pytest.raises(ValueError, match="b: must be greater than a"):
        get_bias_init("uniform").resolve({"a": 1, "b": 0})
    assert get_bias_init("normal").moments(get_bias_init("normal").resolve({"std": 0.5}), 9) == (0.0, 0.25)
    assert get_bias_init("pytorch_default").moments({}, 9) == pytest.approx((0.0, 1 / 27))


def test_entries_pickle_as_themselves():
    # a RunSpec crosses to pool workers by pickle; entries hold lambdas, so they travel by name
    for entry in (get_init("kaiming_normal"), get_bias_init("constant")):
        assert pickle.loads(pickle.dumps(entry)) is entry


def test_unknown_names_and_bad_params_are_value_errors_with_a_hint():
    with pytest.raises(ValueError, match="did you mean 'kaiming_normal'"):
        get_init("kaiming_nromal")
    with pytest.raises(ValueError, match="std: must be >= 0"):
        get_init("normal").resolve({"std": -1})
    with pytest.raises(ValueError, match="mode: must be one of"):
        get_init("kaiming_normal").resolve({"mode": "fan_avg"})
    with pytest.raises(ValueError, match="takes no parameters"):
        get_init("he").resolve({"gain": 2})
    with pytest.raises(ValueError, match="b: must be greater than a"):
        get_init("uniform").resolve({"a": 1, "b": 0})


def test_tutorial_schemes_are_registered_with_their_formulas():
    for name, text in [("uniform_inv_sqrt_n", "1 / sqrt(fan_in)"), ("std_normal", "N(0, 1)"),
                       ("gaussian_inv_sqrt_n", "1 / sqrt(fan_in)"), ("he", "sqrt(2 / fan_in)"),
                       ("he_as_written", "2 / sqrt(fan_in)")]:
        assert text in get_init(name).formula


@pytest.mark.parametrize("name, shape", [("xavier_normal", LINEAR), ("xavier_uniform", CONV), ("orthogonal", LINEAR),
                                         ("delta_orthogonal", CONV)])
def test_gain_critical_sets_each_weights_sigma_w2(name, shape):
    """``gain: critical`` is resolved per weight so that fan_in * Var(w) is the critical sigma_w^2
    exactly, also where an init's variance is not gain^2 / fan_in (non-square Xavier, orthogonal)."""
    critical = 1.7609546  # what theory.critical_sigma_w2("tanh", 0.05) returns; any number does here
    model = nn.Sequential(nn.Linear(shape[1], shape[0], bias=False) if len(shape) == 2
                          else nn.Conv2d(shape[1], shape[0], shape[2], bias=False))
    initialize(model, init=name, init_params=get_init(name).resolve({"gain": "critical"}), auto_gain=1.0,
               generator=torch.Generator().manual_seed(0), critical_sigma_w2=lambda fan_in: critical)
    w = model[0].weight.detach()
    n = w.numel()
    # the sample variance's relative standard error is sqrt(2 / n) (< 0.6% here); 5 of them
    assert fans(shape)[0] * float(w.pow(2).mean()) == pytest.approx(critical, rel=5 * math.sqrt(2 / n))
    with pytest.raises(ValueError, match="gain: 'critical' needs"):
        initialize(model, init=name, init_params=get_init(name).resolve({"gain": "critical"}), auto_gain=1.0)
