"""Initializer registry: name (+ parameters) -> in-place init of a weight tensor.

Every entry wraps ``torch.nn.init`` and knows its own first two moments, ``moments(shape,
params, auto_gain) -> (mean, variance)`` per weight. The moments are what the tests check
the sampled tensors against, and what the mean-field theory uses as
``sigma_w^2 = fan_in * Var(w)``.

Fans follow PyTorch: for a weight of shape ``(out, in, *kernel)``, ``fan_in = in * prod(kernel)``
and ``fan_out = out * prod(kernel)`` — a 3x3 conv with 32 input channels has fan_in 288.

``gain: auto`` (and kaiming's ``nonlinearity: auto``) take the gain of the run's activation;
see ``activations.py`` for that policy. All init policy is applied in one place,
:func:`initialize`: every ``Conv2d`` and ``Linear`` weight (the classifier head included)
gets the run's initializer, every bias gets the run's bias init (zeros by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .registry import Param, check_params, unknown_name_error

Moments = Callable[[Sequence[int], Mapping[str, Any], float], tuple[float, float]]
InitFn = Callable[..., torch.Tensor]

_TORCH_NONLINEARITIES = ("linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu", "selu")


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape, exactly as ``torch.nn.init`` computes them."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a tensor with 2+ dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape: Sequence[int], mode: str) -> int:
    fan_in, fan_out = fans(shape)
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


def _symmetric_uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator | None) -> torch.Tensor:
    return nn.init.uniform_(tensor, -bound, bound, generator=generator)


def _gain(params: Mapping[str, Any], auto_gain: float) -> float:
    return auto_gain if params["gain"] == "auto" else params["gain"]


def _kaiming_gain(params: Mapping[str, Any], auto_gain: float) -> float:
    if params["nonlinearity"] == "auto":
        return auto_gain
    return nn.init.calculate_gain(params["nonlinearity"], params["a"])


# Truncation at +-2 standard deviations of the underlying normal shrinks the std by this factor.
_TRUNC2_STD = 0.87962566103423978


def _truncnorm_moments(mean: float, std: float, a: float, b: float) -> tuple[float, float]:
    """Mean and variance of N(mean, std^2) truncated to [a, b]."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    z = cdf(beta) - cdf(alpha)
    shift = (pdf(alpha) - pdf(beta)) / z
    var = std**2 * (1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z - shift**2)
    return mean + std * shift, var


def variance_scaling_(
    tensor: torch.Tensor, *, scale: float, mode: str, distribution: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Weights with ``Var(w) = scale / fan``: the family LeCun, He and Xavier belong to."""
    std = math.sqrt(scale / _fan(tensor.shape, mode))
    with torch.no_grad():
        if distribution == "normal":
            return nn.init.normal_(tensor, 0.0, std, generator=generator)
        if distribution == "uniform":
            return _symmetric_uniform_(tensor, math.sqrt(3.0) * std, generator)
        if distribution == "truncated_normal":
            s = std / _TRUNC2_STD
            return nn.init.trunc_normal_(tensor, 0.0, s, -2 * s, 2 * s, generator=generator)
    raise ValueError(f"unknown distribution {distribution!r}")


def delta_orthogonal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Conv kernel that is zero except an orthogonal centre tap (Xiao et al. 2018).

    A 2-D weight (a linear layer) gets a plain orthogonal init.
    """
    with torch.no_grad():
        if tensor.dim() == 2:
            return nn.init.orthogonal_(tensor, gain, generator=generator)
        if tensor.dim() < 3:
            raise ValueError("delta_orthogonal needs a weight with 2+ dimensions")
        tensor.zero_()
        centre = tuple(k // 2 for k in tensor.shape[2:])
        tap = torch.empty(tensor.shape[0], tensor.shape[1], dtype=tensor.dtype, device=tensor.device)
        nn.init.orthogonal_(tap, gain, generator=generator)
        tensor[(slice(None), slice(None)) + centre] = tap
        return tensor


@dataclass(frozen=True)
class Initializer:
    """One registered initializer. A validated ``config.Choice`` carries its entry, so a run
    applies it, asks its moments and prints its label without looking the name up again."""

    name: str
    fn: InitFn  # fn(tensor, params, auto_gain, generator) -> tensor, in place
    description: str
    formula: str
    moments: Moments
    params: tuple[Param, ...] = ()

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate parameters; every one with its default filled in. ``ValueError`` names the parameter."""
        resolved = check_params("initializer", self.name, self.params, params)
        if self.name in ("uniform", "trunc_normal") and resolved["a"] >= resolved["b"]:
            raise ValueError("b: must be greater than a")
        return resolved

    def __reduce__(self):
        # pickled by name (its functions are lambdas): a RunSpec sent to a worker process
        # arrives with the same registry entry
        return get_init, (self.name,)


_REGISTRY: dict[str, Initializer] = {}

_GAIN = Param("gain", float, 1.0, "multiplier; 'auto' = the run's activation gain; 'critical' = the gain "
              "with chi_1 = 1 (edge of chaos)", low=0.0, high=100.0, allow_auto=True, words=("critical",))
_MODE = Param("mode", str, "fan_in", "which fan sets the scale", choices=("fan_in", "fan_out"))
_NONLIN = Param("nonlinearity", str, "relu", "gain as in calculate_gain; 'auto' = the run's activation",
                choices=_TORCH_NONLINEARITIES + ("auto",))
_SLOPE = Param("a", float, 0.0, "negative slope when nonlinearity is leaky_relu", low=0.0, high=1.0)


def _register(entry: Initializer) -> None:
    _REGISTRY[entry.name] = entry


def _scaled(name: str, scale: float, distribution: str, description: str, formula: str) -> None:
    """Register a fixed member of the variance-scaling family (fan_in mode)."""

    def fn(t, p, g, gen):
        return variance_scaling_(t, scale=scale, mode="fan_in", distribution=distribution, generator=gen)

    _register(Initializer(name, fn, description, formula,
                          lambda s, p, g: (0.0, scale / fans(s)[0])))


_register(Initializer(
    "zeros", lambda t, p, g, gen: nn.init.zeros_(t), "All weights zero (every unit identical: no learning signal to break symmetry).",
    "w = 0", lambda s, p, g: (0.0, 0.0)))
_register(Initializer(
    "uniform", lambda t, p, g, gen: nn.init.uniform_(t, p["a"], p["b"], generator=gen),
    "Uniform on [a, b]; defaults are Keras' RandomUniform (torch's own default [0, 1) is all positive).",
    "w ~ U[a, b]", lambda s, p, g: ((p["a"] + p["b"]) / 2, (p["b"] - p["a"]) ** 2 / 12),
    (Param("a", float, -0.05, "lower bound", low=-1e3, high=1e3), Param("b", float, 0.05, "upper bound", low=-1e3, high=1e3)),
))
_register(Initializer(
    "normal", lambda t, p, g, gen: nn.init.normal_(t, p["mean"], p["std"], generator=gen),
    "Gaussian with a fixed std, whatever the layer size.", "w ~ N(mean, std^2)",
    lambda s, p, g: (p["mean"], p["std"] ** 2),
    (Param("mean", float, 0.0, "mean", low=-1e3, high=1e3), Param("std", float, 1.0, "standard deviation", low=0.0, high=1e3)),
))
_register(Initializer(
    "trunc_normal", lambda t, p, g, gen: nn.init.trunc_normal_(t, p["mean"], p["std"], p["a"], p["b"], generator=gen),
    "Gaussian redrawn outside [a, b] (absolute bounds, as in torch).", "w ~ N(mean, std^2) truncated to [a, b]",
    lambda s, p, g: _truncnorm_moments(p["mean"], p["std"], p["a"], p["b"]),
    (Param("mean", float, 0.0, "mean", low=-1e3, high=1e3), Param("std", float, 1.0, "std before truncation", low=1e-9, high=1e3),
     Param("a", float, -2.0, "lower cut", low=-1e3, high=1e3), Param("b", float, 2.0, "upper cut", low=-1e3, high=1e3)),
))
_register(Initializer(
    "xavier_uniform", lambda t, p, g, gen: nn.init.xavier_uniform_(t, _gain(p, g), generator=gen),
    "Glorot & Bengio 2010 'normalized' init: keeps variance in both directions for linear units.",
    "w ~ U[-b, b], b = gain * sqrt(6 / (fan_in + fan_out))",
    lambda s, p, g: (0.0, _gain(p, g) ** 2 * 2 / sum(fans(s))), (_GAIN,),
))
_register(Initializer(
    "xavier_normal", lambda t, p, g, gen: nn.init.xavier_normal_(t, _gain(p, g), generator=gen),
    "Glorot & Bengio 2010, Gaussian form.", "w ~ N(0, gain^2 * 2 / (fan_in + fan_out))",
    lambda s, p, g: (0.0, _gain(p, g) ** 2 * 2 / sum(fans(s))), (_GAIN,),
))
_register(Initializer(
    "kaiming_uniform",
    lambda t, p, g, gen: _symmetric_uniform_(t, _kaiming_gain(p, g) * math.sqrt(3 / _fan(t.shape, p["mode"])), gen),
    "He et al. 2015 ('Delving Deep into Rectifiers'), uniform form.",
    "w ~ U[-b, b], b = gain * sqrt(3 / fan)",
    lambda s, p, g: (0.0, _kaiming_gain(p, g) ** 2 / _fan(s, p["mode"])), (_MODE, _NONLIN, _SLOPE),
))
_register(Initializer(
    "kaiming_normal",
    lambda t, p, g, gen: nn.init.normal_(t, 0.0, _kaiming_gain(p, g) / math.sqrt(_fan(t.shape, p["mode"])), generator=gen),
    "He et al. 2015 ('Delving Deep into Rectifiers'): keeps the signal variance through ReLU layers.",
    "w ~ N(0, gain^2 / fan), gain = sqrt(2) for relu",
    lambda s, p, g: (0.0, _kaiming_gain(p, g) ** 2 / _fan(s, p["mode"])), (_MODE, _NONLIN, _SLOPE),
))
_register(Initializer(
    "variance_scaling",
    lambda t, p, g, gen: variance_scaling_(t, scale=p["scale"], mode=p["mode"], distribution=p["distribution"], generator=gen),
    "The general family: Var(w) = scale / fan, so scale is the mean-field sigma_w^2 (fan_in mode).",
    "Var(w) = scale / fan",
    lambda s, p, g: (0.0, p["scale"] / _fan(s, p["mode"])),
    (Param("scale", float, 1.0, "sigma_w^2", low=0.0, high=1e4),
     Param("mode", str, "fan_in", "which fan", choices=("fan_in", "fan_out", "fan_avg")),
     Param("distribution", str, "normal", "shape", choices=("normal", "uniform", "truncated_normal"))),
))
_scaled("lecun_normal", 1.0, "normal", "LeCun et al. 1998: unit variance for linear units (untruncated).",
        "w ~ N(0, 1 / fan_in)")
_scaled("lecun_uniform", 1.0, "uniform", "LeCun et al. 1998, uniform form.", "w ~ U[-b, b], b = sqrt(3 / fan_in)")


def _orthogonal_moments(shape: Sequence[int], p: Mapping[str, Any], g: float) -> tuple[float, float]:
    rows, cols = shape[0], math.prod(shape[1:])
    return 0.0, _gain(p, g) ** 2 / max(rows, cols)


def _delta_orthogonal_moments(shape: Sequence[int], p: Mapping[str, Any], g: float) -> tuple[float, float]:
    taps = math.prod(shape[2:])
    return 0.0, _gain(p, g) ** 2 / max(shape[0], shape[1]) / taps


_register(Initializer(
    "orthogonal", lambda t, p, g, gen: nn.init.orthogonal_(t, _gain(p, g), generator=gen),
    "Saxe et al. 2014: (semi-)orthogonal matrix over the flattened (out, in*k*k) weight.",
    "W W^T = gain^2 I (or W^T W)", _orthogonal_moments, (_GAIN,),
))
_register(Initializer(
    "delta_orthogonal", lambda t, p, g, gen: delta_orthogonal_(t, _gain(p, g), generator=gen),
    "Xiao et al. 2018: conv kernel zero except an orthogonal centre tap (plain orthogonal for linear layers).",
    "W[:, :, centre] orthogonal * gain, other taps 0", _delta_orthogonal_moments, (_GAIN,),
))
_register(Initializer(
    "pytorch_default",
    lambda t, p, g, gen: nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=gen),
    "What nn.Conv2d / nn.Linear do on their own: kaiming_uniform_(a=sqrt(5)).",
    "w ~ U[-b, b], b = 1 / sqrt(fan_in)", lambda s, p, g: (0.0, 1.0 / (3 * fans(s)[0])),
))
# The four schemes of the tutorial the project audits (see docs), under these exact names.
_scaled("uniform_inv_sqrt_n", 1.0 / 3.0, "uniform", "Tutorial scheme 1: uniform with a = 1/sqrt(n), n = fan_in.",
        "w ~ U[-a, a], a = 1 / sqrt(fan_in)")
_register(Initializer(
    "std_normal", lambda t, p, g, gen: nn.init.normal_(t, 0.0, 1.0, generator=gen),
    "Tutorial scheme 2: standard normal, whatever the layer size.", "w ~ N(0, 1)", lambda s, p, g: (0.0, 1.0)))
_scaled("gaussian_inv_sqrt_n", 1.0, "normal", "Tutorial scheme 3: Gaussian with std 1/sqrt(n), n = fan_in.",
        "w ~ N(0, std^2), std = 1 / sqrt(fan_in)")
_scaled("he", 2.0, "normal",
        "Tutorial scheme 4, correctly: He et al. 2015, 'Delving Deep into Rectifiers'.",
        "w ~ N(0, std^2), std = sqrt(2 / fan_in)")
_scaled("he_as_written", 4.0, "normal",
        "The tutorial's misprint of He's formula (std 2/sqrt(n)): sqrt(2) times He's std, twice its variance "
        "(sigma_w^2 = 4), kept to measure the cost.",
        "w ~ N(0, std^2), std = 2 / sqrt(fan_in)")


def get_init(name: str) -> Initializer:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_name_error("initializer", name, _REGISTRY) from None


def list_inits() -> list[Initializer]:
    return list(_REGISTRY.values())


def critical_params(entry: Initializer, params: Mapping[str, Any], auto_gain: float, shape: Sequence[int],
                    critical_sigma_w2: Callable[[int], float] | None) -> Mapping[str, Any]:
    """``params`` with ``gain: critical`` replaced by the number it stands for on a weight of ``shape``.

    ``critical_sigma_w2(fan_in)`` is the mean-field critical ``sigma_w^2`` (``theory``, at the
    bias variance of a layer of that fan-in). The gain is chosen so that *this* weight's
    ``fan_in * Var(w)`` equals it: every init with a gain scales its variance by ``gain^2``, so
    ``gain^2 = critical / (fan_in * Var(w) at gain 1)`` — exact also for Xavier and orthogonal
    weights that are not square, whose variance is not ``gain^2 / fan_in``. Other params pass through.
    """
    if params.get("gain") != "critical":
        return params
    if critical_sigma_w2 is None:
        raise ValueError("gain: 'critical' needs the run's activation and bias to be resolved")
    fan_in = fans(shape)[0]
    unit = fan_in * entry.moments(tuple(shape), {**params, "gain": 1.0}, auto_gain)[1]
    return {**params, "gain": math.sqrt(critical_sigma_w2(fan_in) / unit)}


def init_weight_(
    weight: torch.Tensor, init: str | Initializer, params: Mapping[str, Any], auto_gain: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Initialize one weight tensor in place with a registered initializer (entry or name)."""
    entry = init if isinstance(init, Initializer) else get_init(init)
    with torch.no_grad():
        return entry.fn(weight, params, auto_gain, generator)


# Biases: a small registry of its own, since fan-based rules do not apply to a 1-D tensor.
@dataclass(frozen=True)
class BiasInit:
    """One registered bias init: ``fn(bias, weight, params, generator)`` in place, and
    ``moments(params, fan_in) -> (mean, variance)`` per bias (the mean-field ``sigma_b^2``)."""

    name: str
    fn: Callable[..., torch.Tensor]
    moments: Callable[[Mapping[str, Any], int], tuple[float, float]]
    params: tuple[Param, ...] = ()

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate parameters; every one with its default filled in. ``ValueError`` names the parameter."""
        resolved = check_params("bias init", self.name, self.params, params)
        if self.name == "uniform" and resolved["a"] >= resolved["b"]:
            raise ValueError("b: must be greater than a")
        return resolved

    def __reduce__(self):
        return get_bias_init, (self.name,)


_BIAS_INITS: dict[str, BiasInit] = {b.name: b for b in (
    BiasInit("zeros", lambda b, w, p, gen: b.zero_(), lambda p, fan_in: (0.0, 0.0)),
    BiasInit("constant", lambda b, w, p, gen: b.fill_(p["value"]), lambda p, fan_in: (float(p["value"]), 0.0),
             (Param("value", float, 0.0, "every bias", low=-1e3, high=1e3),)),
    BiasInit("normal", lambda b, w, p, gen: nn.init.normal_(b, p["mean"], p["std"], generator=gen),
             lambda p, fan_in: (float(p["mean"]), float(p["std"]) ** 2),
             (Param("mean", float, 0.0, "mean", low=-1e3, high=1e3),
              Param("std", float, 1.0, "std (sigma_b)", low=0.0, high=1e3))),
    BiasInit("uniform", lambda b, w, p, gen: nn.init.uniform_(b, p["a"], p["b"], generator=gen),
             lambda p, fan_in: ((p["a"] + p["b"]) / 2, (p["b"] - p["a"]) ** 2 / 12),
             (Param("a", float, -0.05, "lower bound", low=-1e3, high=1e3),
              Param("b", float, 0.05, "upper bound", low=-1e3, high=1e3))),
    # what nn.Conv2d / nn.Linear do on their own: U[-1/sqrt(fan_in), 1/sqrt(fan_in)]
    BiasInit("pytorch_default", lambda b, w, p, gen: _symmetric_uniform_(b, 1.0 / math.sqrt(fans(w.shape)[0]), gen),
             lambda p, fan_in: (0.0, 1.0 / (3.0 * fan_in))),
)}


def get_bias_init(name: str) -> BiasInit:
    try:
        return _BIAS_INITS[name]
    except (KeyError, TypeError):
        raise unknown_name_error("bias init", name, _BIAS_INITS) from None


def init_bias_(
    bias: torch.Tensor, weight: torch.Tensor, init: str | BiasInit, params: Mapping[str, Any],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Initialize one bias in place (``weight`` is its layer's, for fan-based rules)."""
    entry = init if isinstance(init, BiasInit) else get_bias_init(init)
    with torch.no_grad():
        return entry.fn(bias, weight, params, generator)


def initialize(
    model: nn.Module, *, init: str | Initializer, init_params: Mapping[str, Any], auto_gain: float,
    bias: str | BiasInit = "zeros", bias_params: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None, critical_sigma_w2: Callable[[int], float] | None = None,
) -> nn.Module:
    """The one place init policy is applied: every conv/linear weight and bias, in module order.

    ``init`` and ``bias`` are registry entries (what a validated ``config.Choice`` carries)
    or names, looked up once here rather than once per layer. Normalization layers keep
    their identity start (scale 1, shift 0). ``critical_sigma_w2`` resolves ``gain: critical``
    layer by layer (:func:`critical_params`).
    """
    init = init if isinstance(init, Initializer) else get_init(init)
    bias = bias if isinstance(bias, BiasInit) else get_bias_init(bias)
    bias_params = bias_params or {}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            params = critical_params(init, init_params, auto_gain, module.weight.shape, critical_sigma_w2)
            init_weight_(module.weight, init, params, auto_gain, generator)
            if module.bias is not None:
                init_bias_(module.bias, module.weight, bias, bias_params, generator)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
