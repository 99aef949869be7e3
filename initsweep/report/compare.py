"""``initsweep compare``: is one set of runs better than another, beyond seed noise?

Pure functions over the runs table (and the stored test predictions); the CLI renders them.

Two ``--where`` expressions select set A and set B among the finished runs (``ok`` and
``diverged``; a run stored by two sweeps counts once). The settings whose values never
overlap between the two sets are *what differs* (``init``: he vs xavier_uniform); every
other setting that takes several values splits the runs into *groups* (one per depth, say).
Within a group a run of A and a run of B form a *pair* when their seeds match: same
settings but the one compared, same seed, so the same data order and the same test images.
Per group, over the pairs' differences d = A - B of the metric:

* ``mean_diff``, ``ci_low``/``ci_high``: the mean of d and its Student-t interval
  (``scipy.stats.t``, n - 1 degrees of freedom; needs 2 pairs);
* ``p_value``: the paired t-test (``scipy.stats.ttest_rel``; needs 2 pairs and d not all equal);
* ``wilcoxon_p``: the signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped);
  empty below ``MIN_WILCOXON`` non-zero differences, where even the most lopsided outcome
  cannot reach 5% (its smallest two-sided p is 2 / 2^n: 0.0625 at n = 5);
* ``mcnemar_p``: the exact McNemar test over the test images, pooled over the pairs: the
  images only A classifies right and those only B does are summed over the seed pairs, and
  ``scipy.stats.binomtest`` tests their split against 1/2 (1.0 when no image differs). Pooling
  treats images of different seeds as independent. Needs every pair's predictions.

A group without pairs (seeds that do not match, or repeat within a set) falls back to
Welch's test of the two sets (``scipy.stats.ttest_ind(equal_var=False)``, its interval with
the Welch-Satterthwaite degrees of freedom; needs 2 runs a side and some spread) and says
so. With several groups, each p column is also Holm-adjusted over the groups that have one
(``*_holm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import stats

from ..columns import SETTING_COLUMNS
from ..errors import OptionError
from ..results.query import where_mask
from ..results.store import PREDICTIONS_SINCE
from .stats import FINISHED, check_metric, friendly, setting_text, setting_value

LEVEL = 0.95
MIN_WILCOXON = 6
P_COLUMNS = ("p_value", "wilcoxon_p", "mcnemar_p")
# a registry choice is compared through its label, which carries its name and parameters
_NOT_COMPARED = {"seed", "init", "init_params", "activation", "activation_params", "bias", "bias_params"}
Predictions = dict[int, tuple[np.ndarray, np.ndarray]]  # row_id -> (predicted, target), as the store reads them


@dataclass
class Comparison:
    """What differs between A and B, the settings that group them, and one row per group."""

    metric: str
    a: str
    b: str
    differ: dict[str, dict[str, list[str]]]  # setting -> {"a": A's values, "b": B's values}, as users name them
    group_by: list[str]  # the settings that split the runs into groups
    groups: list[dict[str, Any]]
    holm: bool  # several groups: each p column also Holm-adjusted over them (``*_holm``)
    difference: str = "a - b"  # the sign of mean_diff and its interval
    level: float = LEVEL


def select(runs: pd.DataFrame, expr: str, param: str) -> pd.DataFrame:
    """The finished runs ``expr`` selects, one per run id; errors name ``param``."""
    try:
        picked = runs[where_mask(runs, expr)]
    except OptionError as exc:  # the --where parser's own words, about this expression
        raise OptionError(param, exc.value, exc.problem, repeat_value=exc.repeat_value) from None
    picked = picked[picked["status"].isin(FINISHED)]
    if picked.empty:
        raise OptionError(param, expr, f"selects none of the {int(runs['status'].isin(FINISHED).sum())} finished runs")
    return picked.sort_values("row_id").drop_duplicates("run_id", keep="last")


def _values(col: str, series: pd.Series) -> list[str]:
    return sorted({str(setting_value(col, v)) for v in series}, key=str)


def compare_runs(runs: pd.DataFrame, a: str, b: str, metric: str = "test_acc",
                 load_predictions: Callable[[list[int]], Predictions] | None = None) -> Comparison:
    """Compare the runs ``a`` selects with those ``b`` selects (see the module docstring).

    ``load_predictions(row_ids)`` gives the stored test predictions of the selected runs
    (``results.read.read_predictions``); without it there is no McNemar test.
    """
    check_metric(runs, metric)
    set_a, set_b = select(runs, a, "a"), select(runs, b, "b")
    shared = sorted(set(set_a["run_id"]) & set(set_b["run_id"]))
    if shared:
        raise OptionError("b", b, f"selects {len(shared)} run(s) the first expression selects too "
                                  f"({shared[0]}, ...): the two sets must not overlap")
    settings = [c for c in SETTING_COLUMNS if c in runs and c not in _NOT_COMPARED]
    differ = {c: {"a": _values(c, set_a[c]), "b": _values(c, set_b[c])} for c in settings
              if not set(_values(c, set_a[c])) & set(_values(c, set_b[c]))}
    both = pd.concat([set_a, set_b])
    predictions = load_predictions([int(r) for r in both["row_id"]]) if load_predictions else {}
    group_by = [c for c in settings if c not in differ and both[c].nunique(dropna=False) > 1]
    rows = []
    for key, group in both.groupby(group_by, dropna=False, sort=True) if group_by else [((), both)]:
        key = key if isinstance(key, tuple) else (key,)
        in_a = group["row_id"].isin(set_a["row_id"])
        rows.append({"group": {friendly(c): None if pd.isna(v) else v for c, v in zip(group_by, key)},
                     "label": setting_text(group_by, key) or "all runs",
                     **_compare_group(group[in_a], group[~in_a], metric, predictions)})
    holm = len(rows) > 1
    if holm:
        for column in P_COLUMNS:
            for row, adjusted in zip(rows, holm_adjust([row[column] for row in rows])):
                row[f"{column}_holm"] = adjusted
    return Comparison(metric, a, b, {friendly(c): values for c, values in differ.items()},
                      [friendly(c) for c in group_by], rows, holm)


def _compare_group(a: pd.DataFrame, b: pd.DataFrame, metric: str, predictions: Predictions) -> dict[str, Any]:
    """The statistics of one group: paired by seed when it can be, else Welch's test."""
    a = a[a[metric].notna()]
    b = b[b[metric].notna()]
    why: list[str] = []
    out: dict[str, Any] = {"n_a": len(a), "n_b": len(b), "n_pairs": 0, "test": None,
                           "mean_a": _mean(a[metric]), "mean_b": _mean(b[metric]),
                           "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                           **{c: math.nan for c in P_COLUMNS}, "a_only_correct": None, "b_only_correct": None,
                           "pairs": []}
    unique = a["seed"].is_unique and b["seed"].is_unique
    pairs = a.merge(b, on="seed", suffixes=("_a", "_b")) if unique else a.head(0)
    if len(pairs):
        out.update(_paired(pairs, metric, predictions, why))
        if len(a) + len(b) > 2 * len(pairs):
            why.append(f"{len(a) + len(b) - 2 * len(pairs)} run(s) without a pair left out")
    elif len(a) and len(b):
        why.append("no seed pairs (seeds repeat within a set): Welch's test" if not unique else
                   "no seed pairs: Welch's test")
        out.update(_welch(a[metric].to_numpy(float), b[metric].to_numpy(float), why))
    else:
        why.append(f"no runs of {'A' if not len(a) else 'B'} in this group")
    return {**out, "why": "; ".join(why)}


def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def _paired(pairs: pd.DataFrame, metric: str, predictions: Predictions, why: list[str]) -> dict[str, Any]:
    x, y = pairs[f"{metric}_a"].to_numpy(float), pairs[f"{metric}_b"].to_numpy(float)
    d = x - y
    n = len(d)
    out: dict[str, Any] = {"n_pairs": n, "test": "paired", "mean_a": float(x.mean()), "mean_b": float(y.mean()),
                           "mean_diff": float(d.mean()),
                           "pairs": [{"seed": int(s), "a": ra, "b": rb} for s, ra, rb in
                                     zip(pairs["seed"], pairs["run_id_a"], pairs["run_id_b"])]}
    if n < 2:
        why.append("one pair: no interval or t-test")
    else:
        sem = float(d.std(ddof=1)) / math.sqrt(n)
        if sem == 0:  # the t statistic is 0/0 or infinite: scipy answers NaN or 0 with a warning
            out["ci_low"] = out["ci_high"] = out["mean_diff"]
            why.append("every pair differs by the same amount: no t-test")
        else:
            low, high = stats.t.interval(LEVEL, n - 1, loc=out["mean_diff"], scale=sem)
            out.update(ci_low=float(low), ci_high=float(high), p_value=float(stats.ttest_rel(x, y).pvalue))
    nonzero = int(np.count_nonzero(d))
    if nonzero < MIN_WILCOXON:
        why.append(f"wilcoxon needs {MIN_WILCOXON} non-zero differences, has {nonzero}")
    else:
        out["wilcoxon_p"] = float(stats.wilcoxon(x, y).pvalue)
    out.update(_mcnemar(pairs, predictions, why))
    return out


def _mcnemar(pairs: pd.DataFrame, predictions: Predictions, why: list[str]) -> dict[str, Any]:
    """The exact McNemar test over the test images of every pair, pooled (see the module doc)."""
    only_a = only_b = 0
    for row_a, row_b in zip(pairs["row_id_a"], pairs["row_id_b"]):
        got_a, got_b = predictions.get(int(row_a)), predictions.get(int(row_b))
        if got_a is None or got_b is None:
            why.append(f"no mcnemar: runs without stored predictions (stored before schema {PREDICTIONS_SINCE}, "
                       "or read from an export)")
            return {}
        (pred_a, target), (pred_b, target_b) = got_a, got_b
        if not np.array_equal(target, target_b):
            why.append("no mcnemar: a pair's runs were tested on different images")
            return {}
        right_a, right_b = pred_a == target, pred_b == target
        only_a += int(np.sum(right_a & ~right_b))
        only_b += int(np.sum(right_b & ~right_a))
    p = float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return {"mcnemar_p": p, "a_only_correct": only_a, "b_only_correct": only_b}


def _welch(x: np.ndarray, y: np.ndarray, why: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"test": "welch", "mean_diff": float(x.mean() - y.mean())}
    if len(x) < 2 or len(y) < 2:
        why.append("Welch's test needs 2 runs in each set")
        return out
    if x.std() == 0 and y.std() == 0:  # scipy would warn and answer NaN
        why.append("no spread in either set: no Welch test")
        return out
    result = stats.ttest_ind(x, y, equal_var=False)
    interval = result.confidence_interval(LEVEL)
    out.update(p_value=float(result.pvalue), ci_low=float(interval.low), ci_high=float(interval.high))
    return out


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of the p-values that are numbers (NaN stays NaN): the
    i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    present = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    out, running = [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        out[i] = running
    return out


def prediction_summary(predicted: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """What ``show`` prints of a run's stored test predictions: counts, per-class accuracy,
    the confusion matrix (rows: true class, columns: predicted)."""
    matrix = confusion(predicted, target)
    return {"n": len(target), "correct": int(np.sum(predicted == target)),
            "per_class": per_class(matrix).to_dict("records"), "confusion": matrix.tolist()}


def confusion(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[classes, classes] counts: row = true class, column = predicted class."""
    classes = int(max(predicted.max(initial=0), target.max(initial=0))) + 1
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (target.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def per_class(matrix: np.ndarray) -> pd.DataFrame:
    """Per true class: its test images, those classified right, and the accuracy."""
    n = matrix.sum(1)
    right = np.diag(matrix)
    accuracy = np.where(n > 0, right / np.maximum(n, 1), np.nan)  # a class absent from the split: no accuracy
    return pd.DataFrame({"class": np.arange(len(n)), "n": n, "correct": right, "accuracy": accuracy})
