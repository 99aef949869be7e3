"""The probe's verdict rules, and the verdict of a point over several seeds.

Why a module of its own: the rules read only numbers (per-layer rows and two factors), so
the report can judge the diagnostics stored with its runs without importing torch, which
``probe.py`` (the measurement) needs. The rules and their thresholds are described in
``probe.py``'s docstring and docs/diagnostics.md#the-verdict.

One seed's init draws one set of weights: He + ReLU in the tutorial CNN measures a
per-layer factor of 1.45-2.13 over seeds 0-5 (one seed within 4% of the ``exploding``
cut). :func:`over_seeds` therefore judges a point by the median of its seeds' numbers
(``judge``'s rules on the median factors, worst dead fraction and mean saturated fraction),
reports each number's range (min-max) over the seeds, and says how many seeds' own
verdicts agree with it: ``exploding (2 of 3 seeds)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEAD_VERDICT = 0.5
SATURATED_VERDICT = 0.5
VANISHING_FACTOR = 0.7  # activations' second moment, per layer
EXPLODING_FACTOR = 1 / 0.7
GRAD_VANISHING_FACTOR = 0.8  # per-example gradient norm, per layer
GRAD_EXPLODING_FACTOR = 1 / 0.8
END_TO_END = 10.0  # and the factor must change the signal by more than this over the network
# The per-layer numbers an overflow turns into inf/NaN (stored as NULL, read back as None).
OVERFLOW_KEYS = ("act_m2", "pre_m2", "act_grad_norm2", "weight_grad_std")


def layer_factor(values: list[float] | np.ndarray, reverse: bool = False) -> float | None:
    """``exp(slope)`` of a least-squares line through ``ln values`` against the index.

    Fitted over the leading run of finite, positive values (from the end if ``reverse``);
    ``None`` with fewer than two such values.
    """
    v = np.asarray([math.nan if x is None else x for x in values], dtype=np.float64)
    if reverse:
        v = v[::-1]
    ok = np.isfinite(v) & (v > 0)
    n = len(v) if ok.all() else int(np.argmin(ok))
    if n < 2:
        return None
    logs = np.log(v[:n])
    idx = np.arange(n, dtype=np.float64)
    slope = np.polyfit(idx, logs, 1)[0]
    return float(math.exp(slope))


def judge(layers: list[dict[str, Any]], forward: float | None, backward: float | None,
          finite: bool) -> tuple[str, str]:
    """The verdict and the reason for it (rules in ``probe.py``'s module docstring)."""
    dead, worst = _worst_dead(layers)
    return _decide(dead, f"layer {worst}", _mean_saturated(layers), len(layers) - 1, forward, backward, finite)


def _worst_dead(layers: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """The largest ``dead_frac`` of a network and its layer (None where no layer has one)."""
    dead = [(l["dead_frac"], i) for i, l in enumerate(layers) if l.get("dead_frac") is not None]
    return max(dead, key=lambda d: d[0]) if dead else (None, None)


def _mean_saturated(layers: list[dict[str, Any]]) -> float | None:
    sat = [l["saturated_frac"] for l in layers if l.get("saturated_frac") is not None]
    return float(np.mean(sat)) if sat else None


def _decide(dead: float | None, dead_at: str, saturated: float | None, span: int, forward: float | None,
            backward: float | None, finite: bool) -> tuple[str, str]:
    """The rules on the numbers they read: the worst layer's dead fraction (at ``dead_at``),
    the mean saturated fraction, the layer-to-layer steps ``span`` and the two factors."""
    if not finite:
        return "exploding", "activations, gradients or the loss overflowed float32 (inf/NaN)"
    if dead is not None and dead >= DEAD_VERDICT:
        return "dead", f"{dead:.0%} of the units of {dead_at} are dead on the whole batch"
    if saturated is not None and saturated >= SATURATED_VERDICT:
        return "saturated", f"{saturated:.0%} of the activations are saturated (mean over layers)"
    checks = (("activation second moment", forward, VANISHING_FACTOR, EXPLODING_FACTOR),
              ("gradient norm", backward, GRAD_VANISHING_FACTOR, GRAD_EXPLODING_FACTOR))
    for name, factor, _, high in checks:
        if factor is not None and factor > high and factor**span > END_TO_END:
            return "exploding", f"{name} grows x{factor:.3g} per layer (x{factor**span:.3g} over the network)"
    for name, factor, low, _ in checks:
        if factor is not None and factor < low and factor**span < 1 / END_TO_END:
            return "vanishing", f"{name} shrinks x{factor:.3g} per layer (x{factor**span:.3g} over the network)"
    parts = [f"{n} x{f:.3g} per layer" for n, f in (("activations", forward), ("gradients", backward)) if f is not None]
    return "healthy", ", ".join(parts) if parts else "a single layer: no per-layer factor"


def _number(value: Any) -> float | None:
    """A finite float, or None (a NULL read back from the store, NaN or inf)."""
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def overflowed(layers: list[dict[str, Any]], loss: float | None = 0.0) -> bool:
    """Whether an activation, gradient or the loss overflowed float32 (the verdict's rule 1).

    A missing number counts: the store keeps inf/NaN as NULL, read back as None.
    """
    return _number(loss) is None or any(_number(l.get(k)) is None for l in layers for k in OVERFLOW_KEYS)


def end_to_end(layers: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """``(last block's activation std / the first's, first block's gradient norm / the last's)``.

    The two ratios the per-layer factors compound to, measured directly: how much the
    signal grows (>1) or shrinks (<1) from the first block to the last, and the gradient
    from the last back to the first. None for a single block or a number that overflowed.
    """
    if len(layers) < 2:
        return None, None
    first, last = layers[0], layers[-1]

    def ratio(top: Any, bottom: Any) -> float | None:
        top, bottom = _number(top), _number(bottom)
        return top / bottom if top is not None and bottom else None

    grad = ratio(last.get("act_grad_norm2"), first.get("act_grad_norm2"))
    return ratio(last.get("act_std"), first.get("act_std")), (1 / math.sqrt(grad) if grad else None)


@dataclass(frozen=True)
class Spread:
    """The median of a number over seeds and its range; None fields when no seed has it."""

    median: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, values: list[Any]) -> "Spread":
        finite = [v for v in map(_number, values) if v is not None]
        if not finite:
            return cls(None, None, None)
        return cls(float(np.median(finite)), min(finite), max(finite))

    def text(self, spec: str = ".3f") -> str:
        """``0.912 [0.880–0.931]``; ``0.912`` when every seed has the same value (or one seed)."""
        if self.median is None:
            return "-"
        if self.low == self.high:
            return format(self.median, spec)
        return f"{self.median:{spec}} [{self.low:{spec}}–{self.high:{spec}}]"


def median_layers(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per layer, each number's median over the seeds (text, e.g. ``kind``, from the first seed)."""
    out = []
    for rows in zip(*per_seed):
        merged = {}
        for key, first in rows[0].items():
            if isinstance(first, str):
                merged[key] = first
                continue
            values = [r.get(key) for r in rows if r.get(key) is not None]
            if values and all(v == values[0] for v in values):
                merged[key] = values[0]  # e.g. fan_in: kept as it is, an int stays an int
            else:
                merged[key] = float(np.median(values)) if values else None
        out.append(merged)
    return out


@dataclass(frozen=True)
class SeedVerdict:
    """A point's verdict over its seeds (see the module docstring)."""

    verdict: str
    reason: str
    agreeing: int  # seeds whose own verdict is ``verdict``
    seeds: int
    forward: Spread
    backward: Spread
    act_end_to_end: Spread
    grad_end_to_end: Spread
    max_dead: Spread  # each seed's worst layer's dead fraction
    mean_saturated: Spread  # each seed's mean saturated fraction over its layers
    layers: list[dict[str, Any]]  # per-layer medians over the seeds

    @property
    def label(self) -> str:
        """``healthy``, or ``exploding (2 of 3 seeds)`` when some seeds' own verdicts differ."""
        return self.counted("seeds")

    def counted(self, noun: str) -> str:
        """The label counting ``noun``: a report group that spans other settings too counts runs."""
        if self.agreeing == self.seeds:
            return self.verdict
        return f"{self.verdict} ({self.agreeing} of {self.seeds} {noun})"


def over_seeds(per_seed: list[dict[str, Any]]) -> SeedVerdict:
    """Judge a point from its seeds' probes: the rules of :func:`judge` on the median over
    the seeds of each number they read (each seed's worst dead fraction, its mean saturated
    fraction, its two factors). The point overflowed when at least half of its seeds did.

    Each item has ``layers`` (the per-layer rows), ``verdict`` (that seed's own), and
    optionally ``loss``. The factors are refitted from the layers (``layer_factor``), so
    stored rows and fresh probes go through the same numbers; with one seed the verdict and
    reason are that seed's own.
    """
    if not per_seed:
        raise ValueError("over_seeds needs at least one seed")
    layers = [s["layers"] for s in per_seed]
    forward = Spread.of([layer_factor([l.get("act_m2") for l in ls]) for ls in layers])
    backward = Spread.of([layer_factor([l.get("act_grad_norm2") for l in ls], reverse=True) for ls in layers])
    ratios = [end_to_end(ls) for ls in layers]
    worst = [_worst_dead(ls) for ls in layers]
    dead = Spread.of([d for d, _ in worst])
    where = sorted({i for d, i in worst if d is not None and d >= DEAD_VERDICT})  # the layers the reason names
    dead_at = f"layer {where[0]}" if len(where) == 1 else f"a layer (layers {', '.join(map(str, where))} over the seeds)"
    saturated = Spread.of([_mean_saturated(ls) for ls in layers])
    n_over = sum(overflowed(s["layers"], s.get("loss", 0.0)) for s in per_seed)
    verdict, reason = _decide(dead.median, dead_at, saturated.median, len(layers[0]) - 1, forward.median,
                              backward.median, finite=2 * n_over < len(per_seed))
    return SeedVerdict(verdict, reason, sum(s["verdict"] == verdict for s in per_seed), len(per_seed),
                       forward, backward, Spread.of([r[0] for r in ratios]), Spread.of([r[1] for r in ratios]),
                       dead, saturated, median_layers(layers))
