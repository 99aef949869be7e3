"""Mean-field theory of signal propagation at initialization, for the model actually built.

The classic recursion (Poole et al. 2016, Schoenholz et al. 2017) follows the second
moment of the pre-activations ``h_l`` of a wide network at initialization:

    q_{l+1} = sigma_w^2 * E_z[phi(sqrt(q_l) z)^2] + sigma_b^2,      z ~ N(0, 1)

with ``sigma_w^2 = fan_in * Var(w)`` taken from the initializer's declared moments
(``inits.get_init(name).moments``) and ``sigma_b^2`` from the bias init. ``q`` is a
*second moment* (``E[h^2]``), and so is ``E[phi^2]``: a ReLU's output has a nonzero mean
and the recursion needs its second moment, not its variance. :func:`recursion` is that
one-line recursion; :func:`chi1`, :func:`fixed_point`, :func:`critical_sigma_w2`,
:func:`correlation_fixed_point` and :func:`depth_scale` are the edge-of-chaos quantities built on it.

:func:`predict` runs the same theory through the layers of a concrete ``Net`` fed a
concrete batch, so that the prediction models the architecture the probe measures:

* **Input.** Layer 0's ``q`` is computed from the batch itself: ``E_W[h(p)^2] =
  Var(w) * sum of x^2 over the taps of position p`` (exact in expectation over the
  weights), so the real digits' statistics and the first layer's padding are included.
* **Borders.** A zero-padded 3x3 conv sees fewer than 9 in-image taps at the border, so
  its output has less variance there. The prediction carries a per-position map of the
  second moment (channel-averaged) and applies each conv to it with its own stride,
  padding and padding mode: ``v_{l+1}(p) = sigma_w^2 * mean_{taps t} m_l(p + t) +
  sigma_b^2`` with out-of-image taps counting zero (``padding: zeros``) or wrapping
  around (``padding: circular``, where every tap is in the image). At 7x7 the zero-padded
  operator's top eigenvalue is ``((1 + 2 cos(pi/8)) / 3)^2 = 0.901`` per layer — the
  border loss of a deep zero-padded CNN at He init — and at 14x14 it is 0.971.
* **Strides, width changes, the dense layers** (``mlp``, the tutorial's Dense 64) are
  handled the same way: a dense layer averages the map over every input.
* **Backward.** The per-example squared norm of the loss gradient with respect to each
  block's output, ``N_l = ||dl/da_l||^2``, follows ``N_{l-1} = sigma_w^2 *
  E[phi'(h_l)^2] * N_l`` for a dense layer (``chi_1`` of Schoenholz et al.), with the
  same per-position border and stride bookkeeping (the adjoint of the forward tap map).
  Its scale at the top depends on the head and the labels, so it is predicted relative
  to the last block (``grad_rel``) and the probe anchors it at the measured last block.

* **Batch norm** (train mode, at init) resets every pre-activation to mean 0, second
  moment 1, and divides the backward gradient by each channel's pre-norm batch std, so a
  layer's gradient factor is ``E[phi'(z)^2] / Var(phi(z))`` whatever the init
  (``pi / (pi - 1) = 1.467`` for ReLU, Yang et al. 2019); modelled for every activation.
* **Finite width** (dense layers): beside the mean over weights, the typical (log-scale)
  second moment ``act_m2_typical``, lower by ``exp(-(kappa - 1) / (2n))`` per layer of ``n``
  units, ``kappa = E[phi^4] / E[phi^2]^2`` (ReLU: Hanin & Rolnick's ``exp(-5/(2n))``).

* **Max-pooling** (the tutorial CNN): the output is each window's maximum, and the gradient
  goes to the window's argmax only (whose ReLU is almost always active), so the prediction
  carries the correlation of neighbouring positions ("lag maps", see ``_pool_moments``)
  through stride-1 convs and takes the window's max, its square, the derivative at its
  argmax and neighbouring windows' products by Monte Carlo over the window's Gaussian law.

Approximations (said where they apply, see ``Prediction.notes``): large width (the typical
prediction covers dense layers only; at 32 channels a CNN's measured log-variance drifts
below the mean prediction too, see ``docs/diagnostics.md``); weights of zero mean
(``uniform``/``normal`` with a nonzero mean are not modelled); batch-averaged correlations
in the pooling windows (one covariance for the batch, not one per image); max-pooling after
batch norm or a strided conv, or a third pooled block in a row, falls back to a random
element of each window (a note says so).

Gaussian expectations use the same composite Simpson rule as
``activations.gaussian_expectation`` (see there for why not Gauss–Hermite), evaluated
through the same ``nn.Module`` the models use, extended to a nonzero mean (a constant
bias) and to ``phi'`` by autograd in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, reduce
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .activations import Activation, gauss_rule, gaussian_expectation, get_activation
from .inits import BiasInit, Initializer, critical_params, fans, get_bias_init, get_init

# ---------------------------------------------------------------- Gaussian expectations


def derivative(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(phi'(x), phi'(x)^2)`` by differences with a step relative to ``|x|`` (float64).

    At a kink both give the mean of the two one-sided values (ReLU: ``phi' = 1/2`` and
    ``phi'^2 = 1/2`` at 0), which is what a quadrature node sitting on the kink must carry;
    the relative step keeps them right for the huge inputs of an exploding network.
    """
    eps = 1e-6 * torch.clamp(x.abs(), min=1.0)
    y, up, down = module(x), module(x + eps), module(x - eps)
    right, left = (up - y) / eps, (y - down) / eps
    return (right + left) / 2, (right * right + left * left) / 2


def _simpson_unit(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w / (3.0 * (n - 1))


# Above this standard deviation the integral is taken in x rather than z: on a fixed
# lattice over [-16, 16] with spacing 0.02, where the activations' kinks (0,
# +-1) fall on nodes, plus Simpson grids over whatever of [mean - 12 std, mean + 12 std]
# lies outside it. On the z-grid a kink away from the mean falls between nodes, which costs
# O(h) on phi'^2 (0.5% for ReLU with bias -1 at std 0.6), and features of width ~1 in x are
# unresolved once std >> 1 (the bump of tanh'^2 at std 100).
_STD_SWITCH = 0.2
_X_DENSE = 16.0
_N_DENSE = 1601
_N_TAIL = 401


def _x_space(mu: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes [rows, nodes] and weights (pdf included) of E[f(h)], h ~ N(mu, std^2), integrated in x."""
    lo, hi = mu - 12.0 * std, mu + 12.0 * std
    left = (lo, np.where(hi < -_X_DENSE, hi, np.maximum(np.minimum(lo, -_X_DENSE), -_X_DENSE)))
    right = (np.where(lo > _X_DENSE, lo, _X_DENSE), np.where(lo > _X_DENSE, hi, np.maximum(hi, _X_DENSE)))
    left = (np.minimum(left[0], left[1]), left[1])
    dense = (np.full_like(mu, -_X_DENSE), np.full_like(mu, _X_DENSE))
    xs, ws = [], []
    for (a, b), n in ((left, _N_TAIL), (dense, _N_DENSE), (right, _N_TAIL)):
        t = np.linspace(0.0, 1.0, n)
        x = a[:, None] + (b - a)[:, None] * t[None, :]
        zz = (x - mu[:, None]) / std[:, None]
        w = _simpson_unit(n)[None, :] * (b - a)[:, None] * np.exp(-zz * zz / 2.0) / (math.sqrt(2.0 * math.pi) * std[:, None])
        xs.append(x)
        ws.append(w)
    return np.concatenate(xs, axis=1), np.concatenate(ws, axis=1)


def gaussian_moments(entry: Activation, params: Mapping[str, Any], mean: np.ndarray | float,
                     var: np.ndarray | float, n: int = 4001) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(E[phi(h)], E[phi(h)^2], E[phi'(h)^2])`` for ``h ~ N(mean, var)``, elementwise over arrays.

    For ``std <= 0.2`` this is the Simpson rule of ``activations.gaussian_expectation`` (``n``
    nodes over z in [-12, 12]), shifted by ``mean``: at ``mean = 0`` ``E[phi^2]`` is exactly
    what ``gaussian_expectation(entry, params, lambda y: y**2, q=var)`` returns. Wider
    Gaussians are integrated in x (see ``_STD_SWITCH``). Evaluated through the activation's
    own module in float64.
    """
    mean, var = np.broadcast_arrays(np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64))
    shape = mean.shape
    mu, std = mean.ravel(), np.sqrt(np.clip(var.ravel(), 0.0, None))
    e1, e2, d2 = (np.zeros(mu.shape) for _ in range(3))
    module = entry.build(params)
    z, wz = gauss_rule(n)
    narrow = std <= _STD_SWITCH
    parts = []
    if narrow.any():
        parts.append((narrow, mu[narrow, None] + std[narrow, None] * z[None, :], np.broadcast_to(wz, (int(narrow.sum()), n))))
    if (~narrow).any():
        parts.append((~narrow, *_x_space(mu[~narrow], std[~narrow])))
    with torch.no_grad():
        for rows, x, w in parts:
            xt = torch.as_tensor(x, dtype=torch.float64)
            y = module(xt).numpy()
            _, dy2 = derivative(module, xt)
            e1[rows] = (y * w).sum(-1)
            e2[rows] = (y * y * w).sum(-1)
            d2[rows] = (dy2.numpy() * w).sum(-1)
    return e1.reshape(shape), e2.reshape(shape), d2.reshape(shape)


# The per-position prediction evaluates E[phi], E[phi^2], E[phi'^2] at hundreds of variances
# per layer; it interpolates them from a table over s = ln(var), s in [-70, 70] every 0.1,
# linearly in ln(E) (exact for positively homogeneous activations such as ReLU, within
# ~1e-4 for tanh's bend); outside it, extrapolated as a power law. The table is built in
# chunks of 10 in s, each once per (activation, params, bias mean) and process, when first
# needed: a network's variances usually span one or two chunks (~20 ms each here).
_S_MIN, _S_MAX, _S_STEP, _S_CHUNK = -70.0, 70.0, 0.1, 10.0
_N_CHUNKS = int(round((_S_MAX - _S_MIN) / _S_CHUNK))
_TINY = 1e-300


def _chunk_grid(c: int) -> np.ndarray:
    return _S_MIN + c * _S_CHUNK + np.arange(int(round(_S_CHUNK / _S_STEP)) + 1) * _S_STEP


@lru_cache(maxsize=256)
def _moment_chunk(name: str, params_key: tuple, mean: float, c: int) -> tuple[np.ndarray, ...]:
    grid = _chunk_grid(c)
    e1, e2, d2 = gaussian_moments(get_activation(name), dict(params_key), mean, np.exp(grid), n=1201)
    return grid, e1, np.log(np.maximum(e2, _TINY)), np.log(np.maximum(d2, _TINY))


def _interp(s: np.ndarray, grid: np.ndarray, table: np.ndarray, extrapolate: bool) -> np.ndarray:
    out = np.interp(s, grid, table)
    if extrapolate:
        lo, hi = s < grid[0], s > grid[-1]
        out[lo] = table[0] + (table[1] - table[0]) / (grid[1] - grid[0]) * (s[lo] - grid[0])
        out[hi] = table[-1] + (table[-1] - table[-2]) / (grid[-1] - grid[-2]) * (s[hi] - grid[-1])
    return out


def tabulated_moments(name: str, params: Mapping[str, Any], mean: float,
                      var: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`gaussian_moments` for many variances at once, interpolated from the cached table."""
    var = np.asarray(var, dtype=np.float64)
    key = tuple(sorted(params.items()))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        s = np.log(np.maximum(var, _TINY)).ravel()
        s = np.where(np.isfinite(var.ravel()), s, np.inf)
        chunk = np.clip(np.floor((s - _S_MIN) / _S_CHUNK), 0, _N_CHUNKS - 1).astype(int)
        e1, e2, d2 = (np.empty_like(s) for _ in range(3))
        for c in np.unique(chunk):
            rows = chunk == c
            grid, t1, t2, t3 = _moment_chunk(name, key, float(mean), int(c))
            log_scale = c in (0, _N_CHUNKS - 1)  # beyond the table: a power law
            e1[rows] = np.interp(s[rows], grid, t1)
            e2[rows] = np.exp(_interp(s[rows], grid, t2, log_scale))
            d2[rows] = np.exp(_interp(s[rows], grid, t3, log_scale))
    e2 = np.where(np.isfinite(var.ravel()), e2, np.inf)
    return e1.reshape(var.shape), e2.reshape(var.shape), d2.reshape(var.shape)


# ---------------------------------------------------------------- the classic recursion


def recursion(activation: str, params: Mapping[str, Any] | None, sigma_w2: float, sigma_b2: float,
              q0: float, depth: int) -> np.ndarray:
    """``[q_0, ..., q_{depth-1}]``: pre-activation second moments of a wide dense net.

    ``q0`` is the first layer's pre-activation second moment; each later layer applies
    ``q <- sigma_w2 * E[phi(sqrt(q) z)^2] + sigma_b2`` (``activations.gaussian_expectation``).
    """
    entry = get_activation(activation)
    params = dict(params or {})
    q = [float(q0)]
    for _ in range(depth - 1):
        prev = q[-1]
        if not math.isfinite(prev) or prev > 1e300:
            q.append(math.inf)
            continue
        q.append(sigma_w2 * gaussian_expectation(entry, params, lambda y: y**2, q=prev) + sigma_b2)
    return np.asarray(q)


def fixed_point(activation: str, params: Mapping[str, Any] | None, sigma_w2: float, sigma_b2: float,
                q0: float = 1.0, steps: int = 2000, tol: float = 1e-12) -> float:
    """``q*``, the pre-activation second moment a deep net settles at (iterating the recursion).

    Returns ``inf`` when ``q`` grows without bound (e.g. ReLU with ``sigma_w2 > 2``) and 0
    when it dies out; convergence can be slow (power-law) exactly at a critical point.
    """
    entry = get_activation(activation)
    params = dict(params or {})
    q = float(q0)
    for _ in range(steps):
        new = sigma_w2 * gaussian_expectation(entry, params, lambda y: y**2, q=q) + sigma_b2
        if not math.isfinite(new) or new > 1e200:
            return math.inf
        if abs(new - q) <= tol * max(1.0, q):
            return new
        q = new
    return q


def chi1(activation: str, params: Mapping[str, Any] | None, sigma_w2: float, sigma_b2: float,
         q: float | None = None) -> float:
    """``chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]``: the per-layer gradient (and correlation) factor.

    ``chi_1 < 1`` is the ordered phase (gradients vanish), ``> 1`` the chaotic phase
    (gradients explode), ``= 1`` the edge of chaos (Schoenholz et al. 2017).
    """
    entry = get_activation(activation)
    params = dict(params or {})
    q = fixed_point(activation, params, sigma_w2, sigma_b2) if q is None else q
    if not math.isfinite(q):
        return math.inf
    _, _, d2 = gaussian_moments(entry, params, 0.0, q, n=4001)
    return float(sigma_w2 * d2)


def _critical_branch(activation: str, params: Mapping[str, Any], sigma_b2: float,
                     q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Along the fixed-point line: ``(sigma_w2(q), chi_1(q))`` of the ``sigma_w^2`` whose fixed point is ``q``.

    ``q* = sigma_w^2 E[phi(sqrt(q*) z)^2] + sigma_b^2`` solved for ``sigma_w^2`` is
    ``(q - sigma_b^2) / E[phi^2](q)``: one quadrature per ``q``, no iteration.
    """
    _, e2, d2 = gaussian_moments(get_activation(activation), params, 0.0, q)
    sigma_w2 = (q - sigma_b2) / e2
    return sigma_w2, sigma_w2 * d2


def _zero_fixed_point_edge(activation: str, params: Mapping[str, Any]) -> float | None:
    """``sigma_w^2`` at which ``q* = 0`` has ``chi_1 = 1`` when ``phi(0) = 0`` and ``sigma_b^2 = 0``, else None.

    With one-sided slopes ``a``, ``b`` at 0, ``E[phi^2] / q`` and ``E[phi'^2]`` both tend to
    ``(a^2 + b^2) / 2`` as ``q -> 0``, so ``chi_1 = 1`` there at ``sigma_w^2 = 2 / (a^2 + b^2)``
    (tanh 1, ReLU 2, SELU 0.4768). In closed form because quadrature and finite differences
    lose their accuracy at the tiny ``q`` where the limit is reached.
    """
    module = get_activation(activation).build(params)
    h = 1e-9
    with torch.no_grad():
        y = module(torch.tensor([-h, 0.0, h], dtype=torch.float64)).tolist()
    if abs(y[1]) > 1e-12:
        return None
    a, b = y[2] / h, -y[0] / h
    return 2.0 / (a * a + b * b) if a * a + b * b > 0 else None


@lru_cache(maxsize=256)
def _critical_sigma_w2(activation: str, params_key: tuple, sigma_b2: float) -> float:
    from scipy.optimize import brentq  # noqa: PLC0415 — scipy.optimize costs ~0.3 s to import; only gain: critical and the studies need it

    params = dict(params_key)
    branch = lambda q: _critical_branch(activation, params, sigma_b2, np.asarray(q, dtype=np.float64))  # noqa: E731
    scale = max(sigma_b2, 1.0)
    grid = sigma_b2 + np.logspace(-6, 8, 281) * scale  # q*, log-spaced just above sigma_b^2
    sigma_w2, chi = branch(grid)
    # a fixed point is stable (the recursion goes there) where a larger sigma_w^2 gives a larger
    # q*; on a falling stretch (GELU, SiLU, Mish near q* = 0) it separates dying from exploding
    stable = np.diff(sigma_w2, append=sigma_w2[-1] + 1.0) >= -1e-9 * sigma_w2
    edge = _zero_fixed_point_edge(activation, params) if sigma_b2 == 0.0 else None
    if edge is not None and stable[0] and chi[0] >= 1.0 - 1e-6:
        # q* = 0 is the critical point, approached from the chaotic side (tanh: 1)
        return edge
    crossing = np.flatnonzero((chi[1:] >= 1.0) & (chi[:-1] < 1.0) & stable[1:] & stable[:-1])
    if crossing.size:
        i = int(crossing[0])
        root = brentq(lambda q: float(branch(q)[1]) - 1.0, grid[i], grid[i + 1], xtol=1e-14, rtol=1e-13)
        return float(branch(root)[0])
    if (chi < 1.0).all() and chi[-1] >= 1.0 - 1e-3 and stable[-1]:
        # chi_1 -> 1 only as q* -> inf: ReLU with sigma_b^2 > 0 and softplus reach the edge at
        # sigma_w^2 = 2, where any larger sigma_w^2 explodes (q* = inf)
        return float(sigma_w2[-1])
    raise ValueError(f"no stable fixed point with chi_1 = 1 for {activation} at sigma_b^2 = {sigma_b2:g}")


def critical_sigma_w2(activation: str, sigma_b2: float, params: Mapping[str, Any] | None = None) -> float:
    """The ``sigma_w^2`` where ``chi_1 = 1`` at the fixed point: tanh at ``sigma_b^2 = 0.05``: 1.76096; at 0: 1.

    Solved along the fixed-point line (:func:`_critical_branch`, Brent's method in ``q*``)
    rather than by bisection in ``sigma_w^2`` around an iterated fixed point: near the
    critical line the iteration converges like a power law, and at ``sigma_b^2 = 0`` the
    unconverged ``q`` left ``chi_1`` below 1 until ``sigma_w^2 = 1.0034`` for tanh.
    ReLU with ``sigma_b^2 > 0`` and softplus reach ``chi_1 = 1`` only as ``q* -> inf``: their
    answer is that limit (2), the largest ``sigma_w^2`` that does not explode. Raises
    ``ValueError`` when no stable fixed point has ``chi_1 = 1`` (GELU, SiLU and Mish at
    ``sigma_b^2 = 0``: their fixed points with ``chi_1 >= 1`` are unstable).
    """
    params = get_activation(activation).resolve(params or {})
    return _critical_sigma_w2(activation, tuple(sorted(params.items())), float(sigma_b2))


def critical_sigma_w2_of(activation: str, activation_params: Mapping[str, Any], bias: str | BiasInit,
                         bias_params: Mapping[str, Any]):
    """``fan_in -> critical sigma_w^2`` at the bias variance of a layer of that fan-in: what
    ``gain: critical`` resolves to (``inits.critical_params``). A bias mean is not part of it."""
    entry = bias if isinstance(bias, BiasInit) else get_bias_init(bias)
    return lambda fan_in: critical_sigma_w2(activation, entry.moments(bias_params, fan_in)[1], activation_params)


def _pair_expectations(activation: str, params: Mapping[str, Any], q: float, c: float,
                       n: int = 201) -> tuple[float, float]:
    """``(E[phi(u1) phi(u2)], E[phi'(u1) phi'(u2)])`` for ``u1, u2 ~ N(0, q)`` with correlation ``c``.

    A tensor product of the Simpson rule over ``(z1, z2)``: ``u1 = sqrt(q) z1``,
    ``u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2)``.
    """
    module = get_activation(activation).build(dict(params))
    z, w = gauss_rule(n)
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    weights = torch.as_tensor(np.outer(w, w))
    u1 = torch.as_tensor(math.sqrt(q) * z1)
    u2 = torch.as_tensor(math.sqrt(q) * (c * z1 + math.sqrt(max(1.0 - c * c, 0.0)) * z2))
    with torch.no_grad():
        e_phi = float((module(u1) * module(u2) * weights).sum())
        e_dphi = float((derivative(module, u1)[0] * derivative(module, u2)[0] * weights).sum())
    return e_phi, e_dphi


def correlation_fixed_point(activation: str, sigma_w2: float, sigma_b2: float,
                            params: Mapping[str, Any] | None = None) -> tuple[float, float]:
    """``(c*, chi_c)``: where the correlation of two inputs settles with depth, and the slope there.

    ``c_{l+1} = (sigma_w^2 E[phi(u1) phi(u2)] + sigma_b^2) / q*``. In the ordered phase
    (``chi_1 < 1``) ``c* = 1`` and ``chi_c = chi_1``; in the chaotic phase ``c* < 1`` is
    found by bisection and ``chi_c = sigma_w^2 E[phi'(u1) phi'(u2)]`` there.
    """
    params = dict(params or {})
    q = fixed_point(activation, params, sigma_w2, sigma_b2)
    c1 = chi1(activation, params, sigma_w2, sigma_b2, q)
    if c1 <= 1.0:
        return 1.0, c1
    f = lambda c: (sigma_w2 * _pair_expectations(activation, params, q, c)[0] + sigma_b2) / q - c  # noqa: E731
    lo, hi = 0.0, 1.0 - 1e-9
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    c_star = (lo + hi) / 2
    return c_star, sigma_w2 * _pair_expectations(activation, params, q, c_star)[1]


def depth_scale(activation: str, sigma_w2: float, sigma_b2: float, params: Mapping[str, Any] | None = None) -> float:
    """``xi_c = -1 / ln(chi_c)``: the depth over which the correlation between inputs is forgotten.

    Schoenholz et al. 2017 found fully connected networks trainable up to about ``6 xi_c``
    layers; ``xi_c`` diverges at the critical point (``inf`` is returned within 1e-9).
    """
    _, chi_c = correlation_fixed_point(activation, sigma_w2, sigma_b2, params)
    if not math.isfinite(chi_c) or chi_c <= 0:
        return 0.0
    if abs(math.log(chi_c)) < 1e-9:
        return math.inf
    return -1.0 / math.log(chi_c)


# ---------------------------------------------------------------- the built model


def sigma_w2_of(init: str | Initializer, init_params: Mapping[str, Any], auto_gain: float,
                shape: Sequence[int]) -> float:
    """``fan_in * Var(w)`` of a weight of this shape under this init (from its declared moments)."""
    entry = init if isinstance(init, Initializer) else get_init(init)
    _, var = entry.moments(tuple(shape), init_params, auto_gain)
    return fans(shape)[0] * var


def weight_mean_of(init: str | Initializer, init_params: Mapping[str, Any], auto_gain: float,
                   shape: Sequence[int]) -> float:
    entry = init if isinstance(init, Initializer) else get_init(init)
    return entry.moments(tuple(shape), init_params, auto_gain)[0]


def bias_moments(bias: str, params: Mapping[str, Any], fan_in: int) -> tuple[float, float]:
    """``(mean, variance)`` of each bias under a bias init (``sigma_b^2`` is the variance),
    as its registry entry declares them."""
    return get_bias_init(bias).moments(params, fan_in)


@dataclass(frozen=True)
class InitRecipe:
    """What the theory needs to know about a run: its init, bias init and activation."""

    init: str
    init_params: Mapping[str, Any]
    auto_gain: float
    activation: str
    activation_params: Mapping[str, Any]
    bias: str = "zeros"
    bias_params: Mapping[str, Any] = field(default_factory=dict)

    def critical_sigma_w2(self, fan_in: int) -> float:
        """The critical ``sigma_w^2`` that ``gain: critical`` stands for on a layer of this fan-in."""
        return critical_sigma_w2_of(self.activation, self.activation_params, self.bias, self.bias_params)(fan_in)

    @classmethod
    def from_spec(cls, spec: Any) -> "InitRecipe":
        """From a ``config.RunSpec`` (its ``model`` section)."""
        m = spec.model
        return cls(m.init.name, dict(m.init.params), m.activation.entry.gain(m.activation.params), m.activation.name,
                   dict(m.activation.params), m.bias.name, dict(m.bias.params))


@dataclass
class Prediction:
    """Per block of the model (arrays of length depth)."""

    sigma_w2: np.ndarray  # fan_in * Var(w) of each block's weight
    pre_m2: np.ndarray  # E[h^2]: second moment of the activation's input, averaged over positions
    act_m2: np.ndarray  # E[phi(h)^2]
    act_var: np.ndarray  # Var of phi(h) over every unit and position (comparable to act_std^2)
    grad_factor: np.ndarray  # N_{l-1} / N_l through block l (chi_1 of that layer, with borders); NaN at 0
    grad_rel: np.ndarray  # N_l / N_{depth-1}
    notes: list[str] = field(default_factory=list)
    # the "typical" (log-scale) E[phi(h)^2] of one finite-width draw; None where not modelled (conv layers)
    act_m2_typical: np.ndarray | None = None


def _tap_kernel(init: str, k: tuple[int, int]) -> np.ndarray:
    """How a conv weight's variance spreads over its taps (sums to 1): uniform, or the centre for delta_orthogonal."""
    if init == "delta_orthogonal":
        kernel = np.zeros(k)
        kernel[k[0] // 2, k[1] // 2] = 1.0
        return kernel
    return np.full(k, 1.0 / (k[0] * k[1]))


class _TapMap:
    """The linear map ``m -> sum_t K_t m(p * stride + t - pad)`` of a conv on a 2-D map, and its adjoint.

    Zero padding: out-of-image taps read 0. Circular: they wrap around. In numpy: the maps
    are tiny (at most 28x28) and float64 convolutions in torch take a slow path.
    """

    def __init__(self, conv: nn.Conv2d, kernel: np.ndarray, in_shape: tuple[int, int]):
        self.kernel, self.in_shape = kernel, in_shape
        self.stride = conv.stride
        self.pad = conv.padding if isinstance(conv.padding, tuple) else (conv.padding, conv.padding)
        self.circular = conv.padding_mode == "circular"
        kh, kw = kernel.shape
        (h, w), (ph, pw), (sh, sw) = in_shape, self.pad, self.stride
        self.out_shape = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        # for each tap, the input rows/cols every output position reads (-1: outside, reads 0)
        rows = np.arange(self.out_shape[0])[:, None] * sh + np.arange(kh)[None, :] - ph  # [Ho, kh]
        cols = np.arange(self.out_shape[1])[:, None] * sw + np.arange(kw)[None, :] - pw  # [Wo, kw]
        if self.circular:
            rows, cols = rows % h, cols % w
        self.rows = np.where((rows >= 0) & (rows < h), rows, -1)
        self.cols = np.where((cols >= 0) & (cols < w), cols, -1)

    def __call__(self, m: np.ndarray) -> np.ndarray:
        padded = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
        padded[:-1, :-1] = m  # index -1 reads the zero row/column
        out = np.zeros(self.out_shape)
        for a in range(self.kernel.shape[0]):
            for b in range(self.kernel.shape[1]):
                if self.kernel[a, b]:
                    out += self.kernel[a, b] * padded[np.ix_(self.rows[:, a], self.cols[:, b])]
        return out

    def adjoint(self, d: np.ndarray) -> np.ndarray:
        acc = np.zeros((self.in_shape[0] + 1, self.in_shape[1] + 1))
        for a in range(self.kernel.shape[0]):
            for b in range(self.kernel.shape[1]):
                if self.kernel[a, b]:
                    np.add.at(acc, np.ix_(self.rows[:, a], self.cols[:, b]), self.kernel[a, b] * d)
        return acc[:-1, :-1]


def _avg_pool(m: np.ndarray, k: int) -> np.ndarray:
    h, w = m.shape[0] // k, m.shape[1] // k
    return m[: h * k, : w * k].reshape(h, k, w, k).mean(axis=(1, 3))


def _avg_pool_adjoint(d: np.ndarray, k: int, in_shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(in_shape)
    h, w = d.shape
    out[: h * k, : w * k] = np.repeat(np.repeat(d, k, axis=0), k, axis=1) / (k * k)
    return out


def _pool_size(pool: nn.MaxPool2d) -> int:
    k = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    s = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
    if k != s or pool.padding not in (0, (0, 0)):
        raise ValueError("only non-overlapping max-pooling without padding is modelled")
    return k


# ---------------------------------------------------------------- max-pooling

# A max-pool's output depends on the joint law of its window, so through pooled blocks the
# prediction carries, besides the second-moment map, "lag maps" C_d(p) = E[a(p) a(p + d)]
# (channel-averaged) for |dy|, |dx| <= 3: what two neighbouring 2x2 windows span. A stride-1
# conv maps each with the same tap map as the second moment (E_W[h(p) h(q)] = Var(w) sum_t
# a(p + t) a(q + t): the same tap on both sides), plus sigma_b^2. The window's max, its
# square, the derivative at its argmax (where the gradient goes) and the products of
# neighbouring windows' maxima are Gaussian expectations in 4 and 8 dimensions, taken by
# Monte Carlo with fixed normal draws (deterministic; 4,096 per window, 1,024 per pair).
_LAG = 3
_MC = 4096
_MC_PAIRS = 1024



def _input_lags(x64: torch.Tensor) -> dict:
    x = x64.numpy()
    _, _, h, w = x.shape
    out = {}
    for dy in range(-_LAG, _LAG + 1):
        for dx in range(-_LAG, _LAG + 1):
            m = np.zeros((h, w))
            ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
            ys2, xs2 = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
            m[ys, xs] = (x[:, :, ys, xs] * x[:, :, ys2, xs2]).mean(axis=(0, 1))
            out[(dy, dx)] = m
    return out


@lru_cache(maxsize=8)
def _std_normal(n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(20181).standard_normal((n, dim))


def _sample(cov: np.ndarray, mean: float, n: int) -> np.ndarray:
    """[N, n, d] Gaussian samples with covariances cov [N, d, d] (fixed normals: deterministic)."""
    w, v = np.linalg.eigh(cov)
    root = v * np.sqrt(np.clip(w, 0.0, None))[:, None, :]  # cov = root root^T
    return mean + _std_normal(n, cov.shape[-1]) @ root.transpose(0, 2, 1)


def _window_positions(hp: int, wp: int, k: int):
    """rows, cols [hp*wp, k*k] of each window's elements."""
    r = np.arange(hp)[:, None, None, None] * k + np.arange(k)[None, None, :, None]
    c = np.arange(wp)[None, :, None, None] * k + np.arange(k)[None, None, None, :]
    r, c = np.broadcast_arrays(r, c)
    return r.reshape(hp * wp, k * k), c.reshape(hp * wp, k * k)


def _cov_of(lags: dict, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """[N, d, d] covariance among the positions (rows, cols) [N, d] from the lag maps."""
    n, d = rows.shape
    out = np.empty((n, d, d))
    for i in range(d):
        for j in range(d):
            dy, dx = rows[:, j] - rows[:, i], cols[:, j] - cols[:, i]
            for lag in set(zip(dy.tolist(), dx.tolist())):
                sel = (dy == lag[0]) & (dx == lag[1])
                out[sel, i, j] = lags[lag][rows[sel, i], cols[sel, i]]
    return out


def _last_max(a: np.ndarray) -> np.ndarray:
    """``a.max(-1)`` for a short last axis (a pooling window), as elementwise maxima of its
    slices: the same values (a maximum is exact, NaN propagates alike), but numpy reduces a
    short strided axis slowly: 12.7 ms against 1.2 ms for the two halves of [196, 1024, 8]
    (the tutorial CNN's pairs of 2x2 windows, which took 40% of its prediction)."""
    return reduce(np.maximum, (a[..., i] for i in range(a.shape[-1])))


def _pool_moments(module, lags: dict, mean: float, shape, k: int, out_lags: bool):
    """Per window: E[A], E[A^2], E[phi'(h_argmax)^2]; and E[A(P) A(P+d)] maps for |d| <= 1 if out_lags."""
    h, w = shape
    hp, wp = h // k, w // k
    rows, cols = _window_positions(hp, wp, k)
    hs = _sample(_cov_of(lags, rows, cols), mean, _MC)  # [N, S, 4]
    with torch.no_grad():
        a = module(torch.as_tensor(hs)).numpy()
        idx = a.argmax(axis=-1)[..., None]  # where max-pooling sends the gradient
        amax = np.take_along_axis(a, idx, -1)[..., 0]
        g = derivative(module, torch.as_tensor(np.take_along_axis(hs, idx, -1)[..., 0]))[1].numpy()
    ea, ea2, eg = amax.mean(1).reshape(hp, wp), (amax**2).mean(1).reshape(hp, wp), g.mean(1).reshape(hp, wp)
    new = {(0, 0): ea2}
    if out_lags:
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                if (dy, dx) == (0, 0) or (dy, dx) in new:
                    continue
                m = np.zeros((hp, wp))
                ys, xs = slice(max(0, -dy), min(hp, hp - dy)), slice(max(0, -dx), min(wp, wp - dx))
                P = np.arange(hp * wp).reshape(hp, wp)[ys, xs].ravel()
                Q = np.arange(hp * wp).reshape(hp, wp)[max(0, dy):min(hp, hp + dy), max(0, dx):min(wp, wp + dx)].ravel()
                r2 = np.concatenate([rows[P], rows[Q]], 1)
                c2 = np.concatenate([cols[P], cols[Q]], 1)
                hh = _sample(_cov_of(lags, r2, c2), mean, _MC_PAIRS)
                with torch.no_grad():
                    aa = module(torch.as_tensor(hh)).numpy()
                prod = (_last_max(aa[..., :k * k]) * _last_max(aa[..., k * k:])).mean(1)
                m[ys, xs] = prod.reshape(m[ys, xs].shape)
                new[(dy, dx)] = m
                # symmetry: E[A(P+d) A(P)] at P+d
                mneg = np.zeros((hp, wp))
                mneg[max(0, dy):min(hp, hp + dy), max(0, dx):min(wp, wp + dx)] = m[ys, xs]
                new[(-dy, -dx)] = mneg
    return ea, ea2, eg, new


def predict(model: nn.Module, x: torch.Tensor, recipe: InitRecipe) -> Prediction:
    """Mean-field prediction for every block of a ``models.Net`` fed the batch ``x`` [B, C, H, W]."""
    params = dict(recipe.activation_params)
    init, bias = get_init(recipe.init), get_bias_init(recipe.bias)  # once, not once per block
    notes: list[str] = []
    blocks = list(model.blocks)
    # m: channel-averaged second moment of the current block's input, per position [H, W]
    x64 = x.detach().to("cpu", torch.float64)
    m = (x64**2).mean(dim=(0, 1)).numpy()
    mu = x64.mean(dim=(0, 1)).numpy()  # the same for the first moment: batch norm subtracts it
    sig_w2, pre_m2, act_m2, act_var, d2_maps, steps = [], [], [], [], [], []
    log_drift, typical = 0.0, []  # ln(typical / mean) of E[phi^2], accumulated over dense layers
    pooled = any(isinstance(b.pool, nn.MaxPool2d) for b in blocks)
    lags = _input_lags(x64) if pooled and x64.dim() == 4 else None  # see _pool_moments
    module = get_activation(recipe.activation).build(params)
    for block in blocks:
        layer = block.layer
        shape = tuple(layer.weight.shape)
        fan_in = fans(shape)[0]
        init_params = critical_params(init, recipe.init_params, recipe.auto_gain, shape, recipe.critical_sigma_w2)
        s2 = sigma_w2_of(init, init_params, recipe.auto_gain, shape)
        if weight_mean_of(init, init_params, recipe.auto_gain, shape) != 0.0:
            notes.append("the init's weights have a nonzero mean, which the prediction ignores")
        b_mean, b_var = bias.moments(recipe.bias_params, fan_in) if layer.bias is not None else (0.0, 0.0)
        if isinstance(layer, nn.Conv2d):
            tap = _TapMap(layer, _tap_kernel(recipe.init, layer.kernel_size), m.shape)
            v = s2 * tap(m) + b_var
            batch_var = s2 * (float(tap(m).mean()) - float(tap(mu).mean()) ** 2)
            if lags is not None and tuple(tap.stride) == (1, 1):
                lags = {d: s2 * tap(c) + b_var for d, c in lags.items()}
            else:
                lags = None
            step = (tap, m.shape, s2, layer.in_channels, layer.out_channels)
        elif isinstance(layer, nn.Linear):
            v = np.full((1, 1), s2 * float(m.mean()) + b_var)
            batch_var = s2 * (float(m.mean()) - float(mu.mean()) ** 2)
            lags = None
            step = (None, m.shape, s2, layer.in_features, layer.out_features)
        else:
            raise ValueError(f"cannot predict through a {type(layer).__name__}")
        mean = b_mean
        if isinstance(block.norm, nn.modules.batchnorm._BatchNorm):
            v, mean = np.ones_like(v), 0.0  # train-mode batch norm at init: mean 0, variance 1 per channel
            lags = None  # a window's law after batch norm is not carried (see the max-pooling note)
            notes.append("batch norm resets every pre-activation to second moment 1 and divides "
                         "the gradient by the pre-norm std (modelled, Yang et al. 2019)")
            step = (*step, batch_var + block.norm.eps)  # batch norm divides by sqrt(var + eps)
        else:
            step = (*step, None)
        steps.append(step)
        e1, e2, d2 = tabulated_moments(recipe.activation, params, mean, v)
        if isinstance(block.norm, nn.modules.batchnorm._BatchNorm):
            log_drift = 0.0  # batch norm rescales every channel to variance 1: no drift carries over
        elif isinstance(layer, nn.Linear) and typical is not None:
            log_drift -= (_kurtosis(recipe.activation, params, mean, float(v.mean())) - 1.0) / (2.0 * layer.out_features)
        else:
            typical = None
        sig_w2.append(s2)
        pre_m2.append(float(v.mean()) + mean**2)
        act_m2.append(float(e2.mean()))
        act_var.append(float(e2.mean()) - float(e1.mean()) ** 2)
        d2_maps.append(d2)
        if typical is not None:
            typical.append(float(e2.mean()) * math.exp(log_drift))
        m, mu = e2, e1
        k = _pool_size(block.pool) if isinstance(block.pool, nn.MaxPool2d) else 0
        window = [(dy, dx) for dy in range(-k + 1, k) for dx in range(-k + 1, k)]
        if k and lags is not None and all(d in lags for d in window):
            wide = all((dy, dx) in lags for dy in range(-_LAG, _LAG + 1) for dx in range(-_LAG, _LAG + 1))
            mu, m, slope2, lags = _pool_moments(module, lags, mean, v.shape, k, wide and k == 2)
            # backward: the gradient reaches only each window's argmax, with its phi'^2
            d2_maps[-1] = np.zeros_like(d2)
            d2_maps[-1][: m.shape[0] * k, : m.shape[1] * k] = np.repeat(np.repeat(slope2, k, 0), k, 1)
        elif k:
            lags = None
            m, mu = _avg_pool(m, _pool_size(block.pool)), _avg_pool(mu, _pool_size(block.pool))
            notes.append("max-pooling after batch norm or a strided conv, or the third pooled block in a row, is "
                         "not modelled: the prediction takes a random element of each window, but a max has a "
                         "larger second moment and its gradient goes to the window's maximum (docs/diagnostics.md)")
        elif not isinstance(block.pool, nn.Identity):
            raise ValueError(f"cannot predict through a {type(block.pool).__name__}")
        else:
            lags = None  # the activation changed the lags; no later window needs them here
    grad_rel, grad_factor = _backward(blocks, steps, d2_maps)
    if typical is None:
        notes.append("the typical (log-scale) prediction is made for dense layers only")
    return Prediction(np.asarray(sig_w2), np.asarray(pre_m2), np.asarray(act_m2), np.asarray(act_var),
                      grad_factor, grad_rel, list(dict.fromkeys(notes)),
                      None if typical is None else np.asarray(typical))


def _kurtosis(activation: str, params: Mapping[str, Any], mean: float, var: float) -> float:
    """``E[phi(h)^4] / E[phi(h)^2]^2`` for ``h ~ N(mean, var)``: ReLU 6 at mean 0, whatever ``var``.

    The finite-width drift of a dense layer of ``n`` units: the layer's empirical
    ``mean_i phi(h_i)^2`` is an average of ``n`` independent draws (given the layer's input), with
    mean ``E[phi^2]`` and relative variance ``(kappa - 1) / n``, so its logarithm is
    ``ln E[phi^2] - (kappa - 1) / (2n)`` on average (second order). For ReLU that is Hanin &
    Rolnick's (2018) ``exp(-5 / (2n))`` per layer: 0.925 at width 32.
    """
    z, w = gauss_rule(4001)
    with torch.no_grad():
        y2 = get_activation(activation).build(params)(torch.as_tensor(mean + math.sqrt(max(var, 0.0)) * z)).numpy() ** 2
    e2 = float(np.dot(w, y2))
    if not (e2 > 0 and math.isfinite(e2)):
        return 1.0
    ratio = y2 / e2  # normalized first: an exploding net's phi^4 overflows where phi^2 does not
    return float(np.dot(w, ratio * ratio))


def _backward(blocks: list[nn.Module], steps: list[tuple], d2_maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-example squared gradient norms with respect to each block's output, relative to the last.

    ``g`` is the per-element, channel-averaged ``E[(dl/da)^2]`` on a block's output grid; it
    starts uniform at the top (both heads spread the gradient evenly) and goes down through
    ``E[delta^2] = E[phi'(h)^2] E[g^2]`` (gradient independence) and the adjoint of each
    layer's tap map: ``E[g_in^2] = sigma_w^2 (C_out / C_in) * adjoint(E[delta^2])``.

    Batch norm (train mode) divides the gradient by each channel's pre-norm batch std
    (``sigma_w^2 Var_batch(a)``: the weights' scale cancels), so a layer's factor becomes
    ``E[phi'(z)^2] / Var(phi(z))`` at ``z ~ N(0, 1)`` whatever the init: ``pi / (pi - 1) =
    1.467`` for ReLU (Yang et al. 2019). The projection that removes the gradient's batch
    mean and its component along the normalized input is left out (a ``1 - 2/B`` effect).
    """
    depth = len(blocks)
    norms = np.full(depth, np.nan)
    factors = np.full(depth, np.nan)
    g = np.ones_like(d2_maps[-1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        norms[-1] = steps[-1][4] * float(g.sum())
        for l in range(depth - 1, 0, -1):
            tap, in_shape, s2, c_in, c_out, batch_var = steps[l]
            d = d2_maps[l] * g if batch_var is None else d2_maps[l] * g / batch_var
            if tap is not None:
                g = s2 * (c_out / c_in) * tap.adjoint(d)
            else:  # g_j = sum_i W_ij delta_i: E[g_j^2] = Var(w) * n_out * mean(D), the same for every input
                g = np.full(in_shape, s2 * c_out * float(d.mean()) / c_in)
            prev = blocks[l - 1]
            if isinstance(prev.pool, nn.MaxPool2d):
                g = _avg_pool_adjoint(g, _pool_size(prev.pool), d2_maps[l - 1].shape)
            norms[l - 1] = steps[l - 1][4] * float(g.sum())
            factors[l] = norms[l - 1] / norms[l]
        rel = norms / norms[-1]
    return rel, factors
