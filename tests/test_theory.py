"""The mean-field theory against closed forms written out here, and its bookkeeping of borders,
strides and gradients against exact linear algebra. No training; all numbers can fail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from initsweep import theory
from initsweep.activations import gaussian_expectation, get_activation
from initsweep.models import build_model

SQRT_2PI = math.sqrt(2 * math.pi)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def phi_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))  # erfc keeps its digits far in the lower tail


def defaults(name: str) -> dict:
    return {p.name: p.default for p in get_activation(name).params}


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "hardtanh", "gelu", "softsign", "leaky_relu"])
@pytest.mark.parametrize("q", [0.01, 0.7, 3.0])
def test_second_moment_is_gaussian_expectation_at_mean_zero(name, q):
    """At std <= 0.2 it is the same rule; wider, an x-grid with the kinks on nodes, which must agree
    (within 1e-5: gaussian_expectation is 2.7e-6 off for hardtanh at q = 0.7, see the next test)."""
    entry = get_activation(name)
    _, e2, _ = theory.gaussian_moments(entry, defaults(name), 0.0, q)
    want = gaussian_expectation(entry, defaults(name), lambda y: y**2, q=q)
    assert float(e2) == pytest.approx(want, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("q", [0.01, 0.7, 3.0, 400.0])
def test_hardtanh_second_moment_closed_form(q):
    """E[clip(h, -1, 1)^2] = q (2 Phi(a) - 1 - 2 a pdf(a)) + 2 (1 - Phi(a)), a = 1 / sqrt(q)."""
    a = 1 / math.sqrt(q)
    want = q * (2 * phi_cdf(a) - 1 - 2 * a * math.exp(-a * a / 2) / SQRT_2PI) + 2 * (1 - phi_cdf(a))
    _, e2, _ = theory.gaussian_moments(get_activation("hardtanh"), defaults("hardtanh"), 0.0, q)
    assert float(e2) == pytest.approx(want, rel=1e-7)


@pytest.mark.parametrize("mu, var", [(0.0, 1.0), (-1.0, 0.36), (0.5, 4.0), (-10.0, 2.0), (0.0, 1e6)])
def test_relu_moments_closed_form(mu, var):
    """h ~ N(mu, s^2): E[relu h] = mu Phi(a) + s pdf(a), E[relu h^2] = (mu^2 + s^2) Phi(a) + mu s pdf(a),
    E[relu'(h)^2] = Phi(a), a = mu / s."""
    s = math.sqrt(var)
    a = mu / s
    pdf = math.exp(-a * a / 2) / SQRT_2PI
    e1, e2, d2 = theory.gaussian_moments(get_activation("relu"), {}, mu, var)
    assert float(e1) == pytest.approx(mu * phi_cdf(a) + s * pdf, rel=1e-5, abs=1e-300)
    assert float(e2) == pytest.approx((mu * mu + var) * phi_cdf(a) + mu * s * pdf, rel=1e-5, abs=1e-300)
    assert float(d2) == pytest.approx(phi_cdf(a), rel=1e-5, abs=1e-300)


@pytest.mark.parametrize("var", [0.25, 1.0, 9.0, 1e4])
def test_hardtanh_slope_is_the_mass_inside_the_kinks(var):
    """E[hardtanh'(h)^2] = P(|h| < 1): exact only if the kinks at +-1 are handled (they fall on nodes)."""
    _, _, d2 = theory.gaussian_moments(get_activation("hardtanh"), defaults("hardtanh"), 0.0, var)
    assert float(d2) == pytest.approx(math.erf(1 / math.sqrt(2 * var)), rel=1e-5)


def test_tanh_slope_at_huge_variance():
    """E[tanh'(h)^2] -> (int sech^4) / sqrt(2 pi q) = (4/3) / sqrt(2 pi q): a bump of width 1 at std 1000."""
    q = 1e6
    _, _, d2 = theory.gaussian_moments(get_activation("tanh"), {}, 0.0, q)
    assert float(d2) == pytest.approx(4 / 3 / math.sqrt(2 * math.pi * q), rel=1e-4)


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "hardtanh", "softsign"])
def test_table_interpolation_matches_direct_quadrature(name):
    var = np.array([1e-6, 0.013, 0.37, 1.0, 2.9, 57.0, 4e3, 1e9])
    direct = theory.gaussian_moments(get_activation(name), defaults(name), 0.0, var)
    table = theory.tabulated_moments(name, defaults(name), 0.0, var)
    for d, t in zip(direct[1:], table[1:]):
        np.testing.assert_allclose(t, d, rtol=2e-3)


def test_relu_recursion_is_linear_and_the_he_fixed_line():
    np.testing.assert_allclose(theory.recursion("relu", {}, 2.0, 0.0, 1.3, 6), 1.3, rtol=1e-9)
    np.testing.assert_allclose(theory.recursion("relu", {}, 1.0, 0.0, 1.0, 4), [1, 0.5, 0.25, 0.125], rtol=1e-9)
    np.testing.assert_allclose(theory.recursion("relu", {}, 1.0, 0.1, 1.0, 3), [1, 0.6, 0.4], rtol=1e-9)
    assert theory.fixed_point("relu", {}, 3.0, 0.0) == math.inf
    assert theory.chi1("relu", {}, 2.0, 0.0, q=1.0) == pytest.approx(1.0, rel=1e-9)


def test_tanh_edge_of_chaos():
    """Schoenholz et al. 2017: for tanh at sigma_b^2 = 0.05 the critical sigma_w^2 is about 1.76."""
    crit = theory.critical_sigma_w2("tanh", 0.05)
    assert crit == pytest.approx(1.76, abs=0.01)
    assert theory.chi1("tanh", {}, crit, 0.05) == pytest.approx(1.0, abs=1e-3)
    assert theory.chi1("tanh", {}, 1.0, 0.05) < 0.8  # ordered phase: perturbations shrink
    assert theory.chi1("tanh", {}, 3.0, 0.05) > 1.2  # chaotic phase: perturbations grow
    # the correlation depth diverges at the critical point and is finite on both sides
    assert theory.depth_scale("tanh", crit, 0.05) > 300
    ordered, chaotic = theory.depth_scale("tanh", 1.0, 0.05), theory.depth_scale("tanh", 4.0, 0.05)
    assert ordered == pytest.approx(-1 / math.log(theory.chi1("tanh", {}, 1.0, 0.05)), rel=1e-6)
    assert 2 < ordered < 10 and 2 < chaotic < 20
    c_star, chi_c = theory.correlation_fixed_point("tanh", 4.0, 0.05)
    assert 0 < c_star < 0.5 and chi_c < 1


def _scipy_chi1(phi, dphi2, sigma_w2: float, sigma_b2: float) -> float:
    """chi_1 at the fixed point, independently: scipy's adaptive quadrature and Brent's root of q* (not the project's rule)."""
    from scipy.integrate import quad
    from scipy.optimize import brentq

    def expect(f, q):
        return quad(lambda z: f(math.sqrt(q) * z) * math.exp(-z * z / 2) / SQRT_2PI, -12, 12, points=[0.0], limit=200)[0]

    q_star = brentq(lambda q: sigma_w2 * expect(lambda x: phi(x) ** 2, q) + sigma_b2 - q, sigma_b2 + 1e-12, 100.0, xtol=1e-14)
    return sigma_w2 * expect(dphi2, q_star)


def test_critical_sigma_w2_exact_at_zero_bias_and_at_the_issue_value():
    """tanh's critical line starts at exactly sigma_w^2 = 1 (1 / tanh'(0)^2); it used to return 1.0034.
    At sigma_b^2 = 0.05 it is 1.76096, where scipy's own quadrature finds chi_1 = 1."""
    assert theory.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-9)
    crit = theory.critical_sigma_w2("tanh", 0.05)
    assert crit == pytest.approx(1.76096, abs=2e-5)
    sech4 = lambda x: (1.0 - math.tanh(x) ** 2) ** 2  # noqa: E731
    assert _scipy_chi1(math.tanh, sech4, crit, 0.05) == pytest.approx(1.0, abs=1e-6)
    assert theory.chi1("tanh", {}, crit, 0.05) == pytest.approx(1.0, abs=1e-6)


def test_critical_sigma_w2_closed_forms():
    """phi(0) = 0 at sigma_b^2 = 0: 2 / (a^2 + b^2) from the slopes on either side of 0. ReLU
    with a bias and softplus reach chi_1 = 1 only as q* -> inf, at 2. GELU has no stable one."""
    lam, alpha = 1.0507009873554805, 1.6732632423543772
    expected = {"relu": 2.0, "hardtanh": 1.0, "softsign": 1.0, "identity": 1.0,
                "leaky_relu": 2 / (1 + 0.01**2), "selu": 2 / (lam**2 * (1 + alpha**2))}
    for name, value in expected.items():
        assert theory.critical_sigma_w2(name, 0.0) == pytest.approx(value, rel=1e-6), name
    assert theory.critical_sigma_w2("relu", 0.05) == pytest.approx(2.0, rel=1e-6)
    assert theory.critical_sigma_w2("softplus", 0.0) == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="no stable fixed point with chi_1 = 1 for gelu"):
        theory.critical_sigma_w2("gelu", 0.0)
    # sigmoid: chi_1 = 1 at sigma_w^2 ~ 103 (the issue's number), checked with scipy
    crit = theory.critical_sigma_w2("sigmoid", 0.0)
    assert crit == pytest.approx(103.0, abs=0.1)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert _scipy_chi1(sig, lambda x: (sig(x) * (1 - sig(x))) ** 2, crit, 0.0) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["tanh", "hardtanh", "softsign"])
def test_chi1_is_one_at_the_critical_sigma_w2_with_a_bias(name):
    """What ``gain: critical`` stands for at sigma_b^2 = 0.05: chi_1 = 1 at the fixed point,
    checked with scipy's adaptive quadrature (not the project's Simpson rule)."""
    phis = {"tanh": (math.tanh, lambda x: (1 - math.tanh(x) ** 2) ** 2),
            "hardtanh": (lambda x: max(-1.0, min(1.0, x)), lambda x: 1.0 if -1 < x < 1 else 0.0),
            "softsign": (lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 4)}
    crit = theory.critical_sigma_w2(name, 0.05)
    assert _scipy_chi1(*phis[name], crit, 0.05) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ["relu", "softplus"])
def test_critical_sigma_w2_of_rectifiers_with_a_bias_is_the_explosion_edge(name):
    """ReLU with a bias, softplus: chi_1 < 1 at every finite fixed point and tends to 1 as q* -> inf,
    which sigma_w^2 = 2 reaches; above it q explodes. So the critical value is 2."""
    params = theory.get_activation(name).resolve({})
    crit = theory.critical_sigma_w2(name, 0.05, params)
    assert crit == pytest.approx(2.0, rel=1e-6)
    assert theory.fixed_point(name, params, 3.0, 0.05) == math.inf
    assert theory.chi1(name, params, 1.98, 0.05) < 1.0
    _, chi = theory._critical_branch(name, params, 0.05, np.array([1e8]))
    assert chi[0] == pytest.approx(1.0, abs=1e-3)


def _conv(padding_mode: str, stride: int) -> nn.Conv2d:
    return nn.Conv2d(4, 4, 3, stride=stride, padding=1, padding_mode=padding_mode)


@pytest.mark.parametrize("mode", ["zeros", "circular"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(7, 7), (14, 14), (13, 9)])
def test_tap_map_adjoint(mode, stride, shape):
    """<A m, d> = <m, A^T d>: the backward bookkeeping is the exact adjoint of the forward one."""
    tap = theory._TapMap(_conv(mode, stride), theory._tap_kernel("he", (3, 3)), shape)
    rng = np.random.default_rng(0)
    m, d = rng.random(shape), rng.random(tap.out_shape)
    assert float((tap(m) * d).sum()) == pytest.approx(float((m * tap.adjoint(d)).sum()), rel=1e-12)


def test_tap_map_matches_torch_conv():
    """The forward map equals a conv with a 1/9 kernel, for zero padding (PyTorch's own padding)."""
    conv = _conv("zeros", 2)
    m = np.random.default_rng(1).random((14, 14))
    got = theory._TapMap(conv, theory._tap_kernel("he", (3, 3)), m.shape)(m)
    want = torch.nn.functional.conv2d(torch.as_tensor(m)[None, None], torch.full((1, 1, 3, 3), 1 / 9,
                                      dtype=torch.float64), stride=2, padding=1)[0, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_zero_padding_border_loss_is_the_top_eigenvalue():
    """Iterating the zero-padded 7x7 tap map converges to ((1 + 2 cos(pi/8)) / 3)^2 = 0.901 per layer;
    circular padding keeps every tap in the image (exactly 1)."""
    want = ((1 + 2 * math.cos(math.pi / 8)) / 3) ** 2
    for mode, expected in (("zeros", want), ("circular", 1.0)):
        tap = theory._TapMap(_conv(mode, 1), theory._tap_kernel("he", (3, 3)), (7, 7))
        m = np.ones((7, 7))
        for _ in range(200):
            new = tap(m)
            ratio, m = new.sum() / m.sum(), new / new.sum()
        assert ratio == pytest.approx(expected, rel=1e-9)


def _net(arch: str, activation: str, **kw) -> nn.Module:
    act = get_activation(activation)
    return build_model(arch, activation=lambda: act.build(defaults(activation)), **kw)


def test_predict_follows_the_built_model():
    x = torch.ones(4, 1, 28, 28) * 1.5  # E[x^2] = 2.25 everywhere
    recipe = theory.InitRecipe("he", {}, math.sqrt(2), "relu", {})
    # circular padding, constant input: He + ReLU keeps E[h^2] = 2 * 2.25 at every layer, gradients x1
    p = theory.predict(_net("plain", "relu", depth=12, width=8, padding="circular"), x, recipe)
    np.testing.assert_allclose(p.pre_m2, 4.5, rtol=1e-9)
    np.testing.assert_allclose(p.act_m2, 2.25, rtol=1e-9)
    np.testing.assert_allclose(p.grad_rel, 1.0, rtol=1e-9)
    # zero padding loses at the borders: at the 7x7 layers the loss approaches 0.901 per layer
    p = theory.predict(_net("plain", "relu", depth=40, width=8), x, recipe)
    assert p.act_m2[-1] / p.act_m2[-2] == pytest.approx(((1 + 2 * math.cos(math.pi / 8)) / 3) ** 2, rel=1e-3)
    # backward, from a uniform gradient at the top, the same factor once away from the top layer
    assert p.grad_factor[20] == pytest.approx(((1 + 2 * math.cos(math.pi / 8)) / 3) ** 2, rel=1e-4)
    # an MLP with LeCun-style weights: sigma_w^2 = 1 halves E[relu^2] and the gradient norm per layer
    lecun = theory.InitRecipe("gaussian_inv_sqrt_n", {}, 1.0, "relu", {})
    p = theory.predict(_net("mlp", "relu", depth=6, width=16), x, lecun)
    np.testing.assert_allclose(p.act_m2[1:] / p.act_m2[:-1], 0.5, rtol=1e-9)
    np.testing.assert_allclose(p.grad_factor[1:], 0.5, rtol=1e-9)
    assert p.pre_m2[0] == pytest.approx(2.25, rel=1e-9)  # sigma_w^2 * mean(x^2)


def test_predict_bias_and_batch_norm():
    x = torch.ones(2, 1, 28, 28)
    dead = theory.InitRecipe("he", {}, math.sqrt(2), "relu", {}, "constant", {"value": -10.0})
    p = theory.predict(_net("mlp", "relu", depth=3, width=8), x, dead)
    # h ~ N(-10, 2): P(h > 0) = Phi(-7.07) ~ 8e-13, so E[relu(h)^2] ~ 6e-14; the next layer sees only the bias
    assert p.act_m2[0] < 1e-12 and p.pre_m2[1] == pytest.approx(100.0, rel=1e-9)
    recipe = theory.InitRecipe("std_normal", {}, 1.0, "tanh", {})
    p = theory.predict(_net("plain", "tanh", depth=3, width=8, norm="batch"), x, recipe)
    np.testing.assert_allclose(p.pre_m2, 1.0)  # batch norm at init: unit second moment, whatever the init
    assert any("batch norm" in n for n in p.notes)


@pytest.mark.parametrize("init", ["std_normal", "he"])
def test_batch_norm_backward_factor_is_the_derivative_over_the_variance(init):
    """With batch norm, a layer's gradient factor is E[phi'(z)^2] / Var(phi(z)), z ~ N(0, 1), whatever
    the init (the weights' scale cancels): for tanh computed here with scipy, for ReLU pi / (pi - 1)."""
    from scipy.integrate import quad

    def expect(f):
        return quad(lambda z: f(z) * math.exp(-z * z / 2) / SQRT_2PI, -12, 12, points=[0.0], limit=200)[0]

    tanh_factor = expect(lambda z: (1 - math.tanh(z) ** 2) ** 2) / expect(lambda z: math.tanh(z) ** 2)
    for act, expected in (("tanh", tanh_factor), ("relu", math.pi / (math.pi - 1))):
        recipe = theory.InitRecipe(init, {}, 1.0, act, {})
        p = theory.predict(_net("mlp", act, depth=5, width=8, norm="batch"), torch.rand(4, 1, 28, 28), recipe)
        np.testing.assert_allclose(p.grad_factor[1:], expected, rtol=1e-4)


def test_max_pool_window_moments_against_order_statistics():
    """One 2x2 window of ReLU inputs: independent N(0, 1) -> E[relu(max)^2] = int_0^inf t^2 4 phi(t)
    Phi(t)^3 dt (scipy) and P(the argmax is active) = 1 - 1/16; perfectly correlated -> one ReLU: 1/2, 1/2.
    Monte Carlo with 4,096 fixed draws: tolerances of 4 standard errors."""
    from scipy.integrate import quad

    def lags_of(rho):  # the window's four positions with correlation rho between any two
        return {(dy, dx): np.full((2, 2), 1.0 if (dy, dx) == (0, 0) else rho) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}

    relu = nn.ReLU()
    ea, ea2, eg, _ = theory._pool_moments(relu, lags_of(0.0), 0.0, (2, 2), 2, False)
    pdf = lambda t: math.exp(-t * t / 2) / SQRT_2PI  # noqa: E731
    second = quad(lambda t: t * t * 4 * pdf(t) * phi_cdf(t) ** 3, 0, 12)[0]
    assert float(ea2[0, 0]) == pytest.approx(second, rel=0.05)
    assert float(eg[0, 0]) == pytest.approx(15 / 16, abs=4 * math.sqrt(15 / 256 / 4096))
    ea, ea2, eg, _ = theory._pool_moments(relu, lags_of(1.0), 0.0, (2, 2), 2, False)
    assert float(ea2[0, 0]) == pytest.approx(0.5, rel=0.05) and float(eg[0, 0]) == pytest.approx(0.5, abs=0.035)


def test_sigma_w2_from_the_declared_moments():
    assert theory.sigma_w2_of("he", {}, 1.0, (32, 16, 3, 3)) == pytest.approx(2.0)
    assert theory.sigma_w2_of("std_normal", {}, 1.0, (32, 16, 3, 3)) == pytest.approx(144.0)
    assert theory.sigma_w2_of("uniform_inv_sqrt_n", {}, 1.0, (10, 100)) == pytest.approx(1 / 3)
    assert theory.sigma_w2_of("xavier_normal", {"gain": 1.0}, 1.0, (100, 300)) == pytest.approx(1.5)
    assert theory.sigma_w2_of("variance_scaling", {"scale": 1.76, "mode": "fan_in", "distribution": "normal"},
                              1.0, (64, 64)) == pytest.approx(1.76)
    assert theory.bias_moments("normal", {"mean": 0.0, "std": math.sqrt(0.05)}, 10) == pytest.approx((0.0, 0.05))
