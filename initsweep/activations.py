"""Activation registry: name (+ parameters) -> ``nn.Module`` factory, with its init gain.

Each entry knows the gain that ``gain: auto`` resolves to for an initializer. The policy:

* activations that ``torch.nn.init.calculate_gain`` knows (identity, sigmoid, tanh, relu,
  leaky_relu, selu) use exactly that value. For SELU that is 3/4, which does *not* give
  Klambauer et al.'s self-normalizing ``Var(w) = 1/fan_in`` (gain 1): kept, since changing
  it would change the run id of every stored SELU run with ``auto``; the entry's description
  and docs/config.md point to ``lecun_normal`` instead;
* the others (elu, gelu, silu, softplus, softsign, mish, hardtanh) use the second-moment
  gain ``1 / sqrt(E[phi(z)^2])`` with ``z ~ N(0, 1)``, computed by quadrature
  (``gaussian_expectation``). It is the gain that keeps ``E[x^2]`` fixed through a layer fed unit
  Gaussians — the same derivation that gives He's sqrt(2) for ReLU.

``gain: critical`` (the gain with ``chi_1 = 1``, edge of chaos) is not a property of the
activation alone (it depends on the bias too): ``theory.critical_sigma_w2`` computes it and
``inits.critical_params`` applies it per weight.

``family`` tells the diagnostics what failure to look for: ``rectifier`` units can die,
``saturating`` units can saturate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .fast_tanh import Tanh
from .registry import Param, check_params, unknown_name_error


@dataclass(frozen=True)
class Activation:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    formula: str
    family: str  # rectifier | saturating | smooth | linear
    gain_key: str | None = None  # calculate_gain's name, None -> second-moment gain
    params: tuple[Param, ...] = ()

    def build(self, params: Mapping[str, Any]) -> nn.Module:
        return self.factory(**params)

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate parameters; every one with its default filled in. ``ValueError`` names the parameter."""
        resolved = check_params("activation", self.name, self.params, params)
        if self.name == "hardtanh" and resolved["min_val"] >= resolved["max_val"]:
            raise ValueError("max_val: must be greater than min_val")
        return resolved

    def __reduce__(self):
        # pickled by name (its factory is a lambda): a RunSpec sent to a worker process
        # arrives with the same registry entry
        return get_activation, (self.name,)

    def gain(self, params: Mapping[str, Any]) -> float:
        """The gain ``gain: auto`` resolves to for this activation (see module docstring)."""
        if self.gain_key == "leaky_relu":
            return nn.init.calculate_gain("leaky_relu", params["negative_slope"])
        if self.gain_key is not None:
            return nn.init.calculate_gain(self.gain_key)
        return 1.0 / math.sqrt(gaussian_expectation(self, params, lambda y: y**2, q=1.0))


_REGISTRY: dict[str, Activation] = {}


def _register(entry: Activation) -> None:
    _REGISTRY[entry.name] = entry


_register(Activation("identity", lambda: nn.Identity(), "No non-linearity (a linear network).",
                     "phi(x) = x", "linear", "linear"))
_register(Activation("sigmoid", lambda: nn.Sigmoid(), "Logistic sigmoid; saturates at both ends, mean 1/2.",
                     "phi(x) = 1 / (1 + e^-x)", "saturating", "sigmoid"))
_register(Activation("tanh", lambda: Tanh(), "Hyperbolic tangent; zero-centred, saturates at +-1.",
                     "phi(x) = tanh(x)", "saturating", "tanh"))
_register(Activation("relu", lambda: nn.ReLU(), "Rectified linear unit; units can die.",
                     "phi(x) = max(0, x)", "rectifier", "relu"))
_register(Activation(
    "leaky_relu", lambda negative_slope: nn.LeakyReLU(negative_slope),
    "ReLU with a small slope for x < 0.", "phi(x) = x if x > 0 else negative_slope * x",
    "rectifier", "leaky_relu",
    (Param("negative_slope", float, 0.01, "slope for x < 0", low=0.0, high=1.0),),
))
_register(Activation("elu", lambda alpha: nn.ELU(alpha), "Exponential linear unit.",
                     "phi(x) = x if x > 0 else alpha * (e^x - 1)", "smooth", None,
                     (Param("alpha", float, 1.0, "saturation value for x -> -inf", low=0.0, high=100.0),)))
_register(Activation("selu", lambda: nn.SELU(), "Scaled ELU (self-normalizing nets). gain: auto is torch's 3/4, "
                     "which breaks self-normalization: use lecun_normal (gain 1, fan_in), as Klambauer et al.",
                     "phi(x) = 1.0507 * (x if x > 0 else 1.6733 * (e^x - 1))", "smooth", "selu"))
_register(Activation("gelu", lambda approximate: nn.GELU(approximate=approximate),
                     "Gaussian error linear unit.", "phi(x) = x * Phi(x)", "smooth", None,
                     (Param("approximate", str, "none", "exact or tanh approximation", choices=("none", "tanh")),)))
_register(Activation("silu", lambda: nn.SiLU(), "Sigmoid linear unit (swish).",
                     "phi(x) = x * sigmoid(x)", "smooth", None))
_register(Activation("softplus", lambda beta: nn.Softplus(beta=beta), "Smooth ReLU.",
                     "phi(x) = log(1 + e^(beta x)) / beta", "smooth", None,
                     (Param("beta", float, 1.0, "sharpness", low=1e-3, high=1e3),)))
_register(Activation("softsign", lambda: nn.Softsign(), "Saturates polynomially (Glorot & Bengio 2010).",
                     "phi(x) = x / (1 + |x|)", "saturating", None))
_register(Activation("mish", lambda: nn.Mish(), "Self-regularized smooth activation.",
                     "phi(x) = x * tanh(softplus(x))", "smooth", None))
_register(Activation(
    "hardtanh", lambda min_val, max_val: nn.Hardtanh(min_val, max_val),
    "Piecewise-linear tanh: clips to [min_val, max_val].", "phi(x) = clip(x, min_val, max_val)",
    "saturating", None,
    (Param("min_val", float, -1.0, "lower clip", low=-1e3, high=1e3),
     Param("max_val", float, 1.0, "upper clip", low=-1e3, high=1e3)),
))


def get_activation(name: str) -> Activation:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_name_error("activation", name, _REGISTRY) from None


def list_activations() -> list[Activation]:
    return list(_REGISTRY.values())


@lru_cache(maxsize=8)
def gauss_rule(n: int, half_width: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of composite Simpson's rule for E[f(z)], z ~ N(0, 1).

    Public: ``theory`` integrates with the same rule, so the two cannot drift apart.

    Gauss–Hermite quadrature is exact for polynomials but converges slowly across a kink
    away from zero (hardtanh at +-1 is 1.2% off with 61 nodes and worse numerically with
    500); Simpson on a dense grid over [-12, 12] (4001 nodes) is accurate to ~1e-9 for
    smooth activations and to a few 1e-6 relative for a kink that falls between nodes
    (hardtanh: 1e-8 at q = 1, where the kinks are nodes; 4e-6 at q = 2), and still costs
    microseconds. ``n`` must be odd.
    """
    z = np.linspace(-half_width, half_width, n)
    h = z[1] - z[0]
    simpson = np.ones(n)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    weights = simpson * h / 3.0 * np.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)
    return z, weights


def gaussian_expectation(
    entry: Activation, params: Mapping[str, Any], f: Callable[[torch.Tensor], torch.Tensor],
    q: float, n: int = 4001,
) -> float:
    """``E_z[f(phi(sqrt(q) z))]`` for ``z ~ N(0, 1)`` (see :func:`gauss_rule`).

    The activation is evaluated through the same ``nn.Module`` the models use (in float64),
    so theory and measurement cannot disagree about what ``phi`` is.
    """
    nodes, weights = gauss_rule(n)
    module = entry.build(params)
    with torch.no_grad():
        x = torch.as_tensor(nodes * math.sqrt(max(q, 0.0)), dtype=torch.float64)
        values = f(module(x)).numpy()
    return float(np.dot(weights, values))
