"""Per-layer diagnostics on one fixed batch, the mean-field prediction beside them, and a verdict.

:func:`probe_model` forwards one fixed batch of real images (the first ``batch_size``
training examples, 64 by default: the split is already a seeded permutation, so no
random number is drawn) through a ``models.Net`` and takes one backward pass of the
training loss, with hooks on every block's activation. Per block ``l`` it records, over
every example, unit and position of the batch:

* ``pre_mean``, ``pre_std``, ``pre_m2``: the activation's input ``h`` (after the norm
  layer, if any); ``pre_m2 = mean(h^2)`` is the second moment the mean-field ``q_l``
  predicts (not the variance: with a bias, or after a ReLU layer, means are not zero);
* ``act_mean``, ``act_std``, ``act_m2``: the activation's output ``a = phi(h)``;
* ``act_grad_std``: std of ``dL/da`` (``L`` the mean cross-entropy the optimizer sees);
  ``act_grad_norm2``: the per-example squared norm ``||dl/da||^2`` averaged over the
  batch, which (unlike a per-element std) keeps its meaning across width and stride changes;
* ``weight_std``, ``weight_grad_std``: the layer's weights and ``dL/dW``;
* ``dead_frac`` (rectifier and smooth activations): the fraction of units — channels of a
  conv, features of a dense layer — whose input stays, on every example and position, in
  the region where ``|phi'(h)| <= DEAD_DERIVATIVE`` (1e-3) times the activation's largest
  derivative (ReLU: ``h <= 0``; ELU: ``h <= -6.9``): such a unit passes no gradient on the
  batch. A leaky ReLU has no such region, so no dead units, however negative its input;
* ``saturated_frac`` (sigmoid, tanh, hardtanh, softsign): the fraction of (example, unit,
  position) entries where ``|phi'(h)| < SATURATION_DERIVATIVE`` (0.1) times the largest
  derivative: tanh beyond |h| > 1.82, sigmoid beyond 3.64, softsign beyond 2.16, hardtanh
  outside [-1, 1] (see :func:`flat_regions`);
* at init, the prediction of ``theory.predict`` for the same model and batch:
  ``sigma_w2``, ``predicted_pre_m2``, ``predicted_act_m2``, ``predicted_act_var`` (the
  variance of ``phi(h)`` over all entries, comparable to ``act_std^2``) and
  ``predicted_act_grad_norm2`` (relative, anchored at the measured last block). These are
  mean-field values: the average over the weights. ``predicted_typical_forward_factor`` is
  the log-scale ("typical") factor one finite-width draw drifts to (dense layers only).

Per-layer factors. ``forward_factor`` is the geometric-mean per-layer factor of the
activation second moment ``act_m2``, estimated as ``exp(slope)`` of a least-squares line
through ``ln act_m2`` against the layer index (every layer counts, so one unlucky endpoint
does not decide it; for a geometric sequence it is exactly the ratio).
``backward_factor`` is the same fit on ``act_grad_norm2`` read from the last block down:
the factor by which the gradient grows (>1) or shrinks (<1) per layer on its way to the
input. Only the leading run of finite, positive values is fitted.

Verdict (at init; the code is ``verdicts.judge``, and ``verdicts.over_seeds`` judges a point over
several seeds by the median of these numbers), the first rule that applies:

1. ``exploding`` — a non-finite activation, gradient or loss (float32 overflow);
2. ``dead`` — some layer has ``dead_frac >= DEAD_VERDICT`` (0.5);
3. ``saturated`` — the mean ``saturated_frac`` over layers is ``>= SATURATED_VERDICT`` (0.5);
4. ``exploding`` — ``forward_factor > 1/0.7`` or ``backward_factor > 1/0.8``, and that
   factor compounds to more than ``END_TO_END`` (10x) over the network's depth;
5. ``vanishing`` — ``forward_factor < 0.7`` or ``backward_factor < 0.8``, compounding to
   less than 1/10 over the depth;
6. ``healthy``.

Why these bands. They are per layer, so architecture losses that are not the init's fault
stay healthy: 50 zero-padded 3x3 convs at He init lose variance at the borders (predicted
0.91 per layer, 0.90 at 7x7) and at finite width the forward second moment drifts below
the prediction (measured 0.86-0.88 at width 32, 0.79-0.82 at width 16), while LeCun-style
``gaussian_inv_sqrt_n`` with ReLU halves it every layer (0.40-0.45): the forward band is
[0.7, 1/0.7]. The backward factor tracks its prediction more closely: within about 4% in the
MLPs and plain CNNs of docs/diagnostics.md (batch norm included: 1.470 measured, 1.467
predicted), and through the tutorial CNN's max-pooling, modelled by the order statistics of
each window, within 2% for ReLU (1.133 vs 1.115 at He) and 3-6% for tanh (0.945 vs 0.914;
12.22 vs 11.50 at N(0, 1)); tests/test_probe.py and tests/test_probe_theory.py. So its band
is narrower, [0.8, 1.25]. The band separates tanh at
``sigma_w^2 = 1`` (``chi_1 = 0.76``, ordered) and 4 (1.34, chaotic) from the edge of chaos.
The end-to-end floor keeps a shallow net from being judged by a per-layer factor it
barely compounds (the 4-block tutorial CNN grows its activations x1.76 per layer through
max-pooling, x5 in all). A one-block network is judged by rules 1-3 only.

Probing never changes a run: no random numbers are drawn, ``torch.autograd.grad`` leaves
every ``.grad`` untouched, batch-norm buffers (running statistics and
``num_batches_tracked``) are restored and the train/eval mode is put back.
``tests/test_probe.py`` checks that a run's metrics are bit-identical with and without it.

Cost: one forward and backward pass of the batch plus per-layer reductions and the
prediction (~0.01-0.03 s); ``benchmarks/bench_probe.py`` times a 50-layer, width-32 plain
CNN: 0.11 s per point with 64 images on one thread of this shared 2-core CPU, 0.23 s
before the reductions stopped using ``torch.var_mean`` (docs/diagnostics.md#cost).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .activations import get_activation
from .inits import fans
from .build import build_initialized_model, seed_streams
from .theory import InitRecipe, Prediction, derivative, predict
from .verdicts import judge, layer_factor, overflowed  # the rules: numpy only, so the report reads them without torch

DEAD_DERIVATIVE = 1e-3
SATURATION_DERIVATIVE = 0.1
DEFAULT_BATCH = 64



@dataclass
class ProbeResult:
    """The diagnostics of one model on one batch."""

    layers: list[dict[str, Any]]  # one dict per block, keyed by the store's columns.LAYER_COLUMNS
    verdict: str
    reason: str
    forward_factor: float | None
    backward_factor: float | None
    predicted_forward_factor: float | None = None
    predicted_backward_factor: float | None = None
    # the mean-field factor is the average over weights; the typical one, the log-scale value one
    # finite-width draw drifts to (dense layers only: theory.Prediction.act_m2_typical)
    predicted_typical_forward_factor: float | None = None
    loss: float | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def rows(self, phase: str) -> list[dict[str, Any]]:
        """The ``layers`` table rows of this probe (``store.finish`` writes them)."""
        return [{"phase": phase, "layer": i, **layer} for i, layer in enumerate(self.layers)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fixed_batch(x: torch.Tensor, y: torch.Tensor, batch_size: int = DEFAULT_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's batch: the first ``batch_size`` examples (the training split is already a
    seeded permutation, so this is a fixed random sample that draws no random numbers)."""
    return x[:batch_size], y[:batch_size]


def _stats(t: torch.Tensor) -> tuple[float, float, float]:
    """(mean, std, mean square) over every entry.

    Two passes, the mean and then the mean squared deviation from it: the population
    variance as ``torch.var_mean`` gives it, as accurately (the textbook stable algorithm;
    4e-8 relative against a float64 reference here), but ``var_mean``'s CPU kernel is 16x
    slower: 0.88 ms against 0.056 ms for a 64x16x14x14 activation on one thread, most of
    the probe's time. In the tensor's own precision (a float64 copy of every activation
    would double the probe's cost), redone in float64 when that overflows: an exploding
    network's values can be finite in float32 while their squares are not.
    """
    t = t.detach()
    mean, var = _mean_var(t)
    if not (math.isfinite(mean) and math.isfinite(var)) and bool(torch.isfinite(t).all()):
        mean, var = _mean_var(t.to(torch.float64))
    return mean, math.sqrt(var) if var >= 0 else math.nan, var + mean * mean


def _mean_var(t: torch.Tensor) -> tuple[float, float]:
    mean = t.mean()
    return float(mean), float((t - mean).square().mean())


@lru_cache(maxsize=64)
def flat_regions(name: str, params_key: tuple) -> tuple[float, float, float]:
    """Where an activation passes (almost) no gradient, from its derivative on a fine grid.

    Returns ``(dead_below, saturated_below, saturated_above)``: a unit is dead when its
    input never exceeds ``dead_below`` (where ``|phi'| <= DEAD_DERIVATIVE * max|phi'|``, the
    region reaching to -inf: ReLU 0, ELU -6.9; ``-inf`` when there is none, e.g. a leaky
    ReLU), and an entry is saturated where ``h < saturated_below`` or ``h > saturated_above``
    (``|phi'| < SATURATION_DERIVATIVE * max|phi'|`` on the two tails: tanh +-1.82, sigmoid
    +-3.64, softsign +-2.16, hardtanh outside [-1, 1]). With these, the per-entry checks are comparisons on ``h``
    instead of a derivative of every activation (a third of the probe's time otherwise).
    The grid: [-50, 50] every 0.001.
    """
    module = get_activation(name).build(dict(params_key))
    with torch.no_grad():
        x = torch.arange(-50_000, 50_001, dtype=torch.float64) / 1000  # exact 0 and +-1
        slope = derivative(module, x)[0].abs()
    top = float(slope.max())
    xs = x.numpy()

    def left_tail(flat: np.ndarray) -> float:
        """The first grid point past the flat region that reaches -50: ReLU's is exactly 0."""
        if not flat[0]:
            return -math.inf
        return float(xs[int(np.argmin(flat))]) if not flat.all() else math.inf

    def right_tail(flat: np.ndarray) -> float:
        return -left_tail(flat[::-1]) if flat[-1] else math.inf

    dead = (slope <= DEAD_DERIVATIVE * top).numpy()
    saturated = (slope < SATURATION_DERIVATIVE * top).numpy()
    return left_tail(dead), left_tail(saturated), right_tail(saturated)


@torch.no_grad()
def _snapshot_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(b, b.detach().clone()) for b in model.buffers()]


@torch.no_grad()
def _restore_buffers(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for buffer, copy in saved:
        buffer.copy_(copy)


def probe_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: InitRecipe,
                with_prediction: bool = True, prediction: Prediction | None = None) -> ProbeResult:
    """Measure every block of ``model`` on the batch ``(x, y)``; predict beside it if asked.

    ``recipe`` names the activation (for the dead/saturation rules) and the init (for the
    prediction, which only applies to a model as initialized). The model runs in train
    mode, as the optimizer sees it (batch norm normalizes with the batch's statistics), and
    is left exactly as it was. ``prediction``: ``predict(model, x, recipe)`` computed before
    (``probe_for_run`` keeps one per seedless run id), used instead of computing it again.
    """
    t_start = time.perf_counter()
    entry = get_activation(recipe.activation)
    params_key = tuple(sorted(recipe.activation_params.items()))
    family = entry.family
    dead_below, sat_below, sat_above = flat_regions(recipe.activation, params_key)
    blocks = list(model.blocks)
    captured: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(blocks)

    def hook(i: int):
        def capture(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            captured[i] = (inputs[0], output)
        return capture

    was_training = model.training
    saved = _snapshot_buffers(model)
    handles = [block.act.register_forward_hook(hook(i)) for i, block in enumerate(blocks)]
    try:
        model.train()
        with torch.enable_grad():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            acts = [c[1] for c in captured]
            weights = [block.layer.weight for block in blocks]
            grads = torch.autograd.grad(loss, acts + weights, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        _restore_buffers(saved)
        model.train(was_training)
    act_grads, weight_grads = grads[: len(blocks)], grads[len(blocks):]
    batch = len(x)
    layers = []
    for i, block in enumerate(blocks):
        pre, act = captured[i]
        weight = block.layer.weight
        pre_mean, pre_std, pre_m2 = _stats(pre)
        act_mean, act_std, act_m2 = _stats(act)
        ga = act_grads[i] if act_grads[i] is not None else torch.zeros_like(act)
        gw = weight_grads[i] if weight_grads[i] is not None else torch.zeros_like(weight)
        _, ga_std, ga_m2 = _stats(ga)
        row = {
            "kind": "conv" if isinstance(block.layer, nn.Conv2d) else "linear",
            "fan_in": fans(tuple(weight.shape))[0],
            "sigma_w2": None,
            "pre_mean": pre_mean, "pre_std": pre_std, "pre_m2": pre_m2,
            "act_mean": act_mean, "act_std": act_std, "act_m2": act_m2,
            "act_grad_std": ga_std,
            # per-example ||dl/da||^2: L is the batch mean, so dL/da = (dl/da) / B
            "act_grad_norm2": ga_m2 * ga.numel() * batch,
            "weight_std": _stats(weight)[1],
            "weight_grad_std": _stats(gw)[1],
            "dead_frac": None, "saturated_frac": None,
            # the mean-field prediction, made at init only (below)
            "predicted_pre_m2": None, "predicted_act_m2": None, "predicted_act_var": None,
            "predicted_act_grad_norm2": None,
        }
        if family == "saturating":
            h = pre.detach()
            row["saturated_frac"] = float(((h < sat_below) | (h > sat_above)).float().mean())
        elif family in ("rectifier", "smooth"):
            # [units] or [channels, H, W]; from a contiguous copy: reducing a channels_last
            # tensor over examples is 7x slower than copying it first (0.56 vs 0.08 ms)
            peak = pre.detach().contiguous().amax(dim=0)
            peak = peak.reshape(peak.shape[0], -1).amax(dim=1)  # the largest input of each feature / channel
            row["dead_frac"] = float((peak <= dead_below).float().mean())
        layers.append(row)
    notes: list[str] = []
    if not with_prediction:
        prediction = None
    elif prediction is None:
        prediction = predict(model, x, recipe)
    if prediction is not None:
        notes = prediction.notes
        anchor = layers[-1]["act_grad_norm2"]
        for i, row in enumerate(layers):
            row["sigma_w2"] = float(prediction.sigma_w2[i])
            row["predicted_pre_m2"] = float(prediction.pre_m2[i])
            row["predicted_act_m2"] = float(prediction.act_m2[i])
            row["predicted_act_var"] = float(prediction.act_var[i])
            row["predicted_act_grad_norm2"] = float(prediction.grad_rel[i] * anchor)
    forward = layer_factor([l["act_m2"] for l in layers])
    backward = layer_factor([l["act_grad_norm2"] for l in layers], reverse=True)
    loss_value = float(loss.detach())
    verdict, reason = judge(layers, forward, backward, finite=not overflowed(layers, loss_value))
    result = ProbeResult(layers, verdict, reason, forward, backward, loss=loss_value, notes=list(notes))
    if prediction is not None:
        result.predicted_forward_factor = layer_factor(prediction.act_m2)
        result.predicted_backward_factor = layer_factor(prediction.grad_rel, reverse=True)
        if prediction.act_m2_typical is not None:
            result.predicted_typical_forward_factor = layer_factor(prediction.act_m2_typical)
    result.seconds = time.perf_counter() - t_start
    return result


def probe_spec(spec: Any, x: torch.Tensor, y: torch.Tensor) -> ProbeResult:
    """Probe a ``RunSpec``'s model at init: the same weights ``train.run`` starts from."""
    init_seed, _ = seed_streams(spec.seed)
    model = build_initialized_model(spec, torch.Generator().manual_seed(init_seed)).to(x.device)
    return probe_model(model, x, y, InitRecipe.from_spec(spec))


def probe_for_run(model: nn.Module, spec: Any, x: torch.Tensor, y: torch.Tensor, phase: str) -> ProbeResult | None:
    """What ``train.run`` calls at ``phase`` (``init`` / ``final``); ``None`` when switched off.

    The settings come from the spec's ``diagnostics`` (``config.DiagnosticsConfig``):
    ``enabled``, ``batch_size`` and ``phases``. The prediction is made at init only.
    """
    diag = getattr(spec, "diagnostics", None)
    if diag is None or not diag.enabled or phase not in diag.phases:
        return None
    xb, yb = fixed_batch(x, y, diag.batch_size)
    recipe = InitRecipe.from_spec(spec)
    prediction = _shared_prediction(spec, model, xb, recipe) if phase == "init" else None
    return probe_model(model, xb, yb, recipe, with_prediction=(phase == "init"), prediction=prediction)


# The mean-field predictions this process made, by (seedless run id, probe batch size): the
# runs of a point that differ only by seed share one (the tutorial CNN's takes 60-110 ms).
_PREDICTIONS: OrderedDict[tuple[str, int], Prediction] = OrderedDict()
_PREDICTIONS_KEPT = 64


def _shared_prediction(spec: Any, model: nn.Module, x: torch.Tensor, recipe: InitRecipe) -> Prediction:
    """``predict(model, x, recipe)``, made once per process for all the seeds of a run.

    Valid because the prediction reads the model's shapes and the init's law, never the
    weights a seed draws, and ``x`` is the probe batch of the run's data settings, which the
    seedless id covers (``tests/test_probe.py`` checks that two seeds predict alike). The
    arrays are made read-only: a caller that wrote into one would change every seed's.
    """
    key = (spec.seedless_id, len(x))
    if key in _PREDICTIONS:
        _PREDICTIONS.move_to_end(key)
        return _PREDICTIONS[key]
    prediction = predict(model, x, recipe)
    for value in vars(prediction).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    _PREDICTIONS[key] = prediction
    if len(_PREDICTIONS) > _PREDICTIONS_KEPT:
        _PREDICTIONS.popitem(last=False)
    return prediction
