"""``initsweep check``: the CI regression gate, current runs against a baseline.

A group regresses when its seed mean falls below the baseline's by more than
``max(tolerance, sigma × se)``: ``se`` is the standard error of the difference of the two
seed means, ``sqrt(s_a²/n_a + s_b²/n_b)`` from the seeds' sample std, so a drop that seed
noise explains does not fail the gate, and a fixed ``tolerance`` still bounds it below
(identical results have ``se`` 0). A side with one seed has no sample std: for an accuracy,
its binomial standard error ``sqrt(p(1-p)/n)`` over the ``n`` images it was measured on
stands in (``ACCURACY_IMAGES``); for another metric the group is judged by the tolerance
alone, and the result's ``notes`` say so.

A run that newly diverged or failed, or went missing, fails the gate when ``--fail-on``
names it. The environments of the two sides are compared too (``ENVIRONMENT``): their
differences are returned, and fail the gate only under ``strict_env``. The result is
also JUnit test cases (``ci.Case``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from ..errors import OptionError
from .ci import Case


CHECKS = ("diverged", "failed", "missing")

# An accuracy is the share of n images classified right; the column that holds n per run.
ACCURACY_IMAGES = {"test_acc": "n_test", "best_val_acc": "n_val", "final_val_acc": "n_val",
                   "final_train_acc": "n_train"}

# The run columns a baseline is only comparable under. ``device`` is compared by type (cuda:0
# and cuda:1 are alike), ``dataset`` by the data a run actually used, a fallback
# (``data.fallback``) spelled out. Not ``cpu_model`` or ``gpu_name``: another CPU moves a
# result by its last-bit noise (tests/tolerances.py: an image of 256), far inside the gate's
# ``K x se``, while hosted CI runners draw their CPU model anew on every job, so the warning
# would fire on most runs and ``--strict-env`` would fail on the draw. ``cuda_version`` is
# already part of ``torch_version`` (``2.14.1+cu130``).
ENVIRONMENT = ("torch_version", "initsweep_version", "device", "precision", "dataset")


@dataclass(frozen=True)
class EnvDifference:
    """A field of the environment whose values differ between the baseline and the current runs."""

    field: str
    baseline: str  # its values there, comma-separated
    current: str

    def __str__(self) -> str:
        return f"{self.field} differs: baseline {self.baseline}, current {self.current}"


@dataclass
class CheckResult:
    """One row per group of runs (matched by settings), why the check failed, if it did,
    and how the two sides' environments differ."""

    # keys..., base_n, base_mean, n, mean, delta, se, threshold, base_diverged, diverged, failed, verdict
    table: pd.DataFrame
    keys: list[str]
    metric: str
    tolerance: float
    sigma: float = 2.0
    env_differences: list[EnvDifference] = field(default_factory=list)
    strict_env: bool = False
    notes: list[str] = field(default_factory=list)  # how groups without a standard error were judged

    @property
    def failures(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] != "ok"]

    @property
    def env_failed(self) -> bool:
        """Do the environments differ where ``strict_env`` makes that a failure?"""
        return self.strict_env and bool(self.env_differences)

    @property
    def passed(self) -> bool:
        return self.failures.empty and not self.env_failed

    @property
    def rule(self) -> str:
        """The gate's rule in words, with this check's numbers."""
        return f"a group regresses when its drop exceeds max(tolerance {self.tolerance:g}, {self.sigma:g} × se)"


def check_against(current: pd.DataFrame, baseline: pd.DataFrame, *, metric: str = "test_acc",
                  tolerance: float = 0.01, sigma: float = 2.0, fail_on: Iterable[str] = CHECKS,
                  strict_env: bool = False) -> CheckResult:
    """Compare seed means per group with a baseline; a group fails on a regression beyond
    ``max(tolerance, sigma × se)`` (in the metric's units and direction; see the module
    docstring), or, as ``fail_on`` asks, on a newly diverged or failed run or on a group the
    baseline has and the current runs lack. Environment differences are returned on the
    result; ``strict_env`` makes any of them fail it."""
    from .stats import compare, lower_is_better, resolve_by, summarize

    fail_on = set(fail_on)
    unknown = fail_on - set(CHECKS)
    if unknown:
        raise OptionError("fail_on", sorted(unknown)[0], f"use any of {', '.join(CHECKS)}")
    if tolerance < 0 or not math.isfinite(tolerance):
        raise OptionError("tolerance", tolerance, "must be a number >= 0")
    if sigma < 0 or not math.isfinite(sigma):
        raise OptionError("sigma", sigma, "must be a number >= 0")
    differences = env_differences(current, baseline)
    current, baseline = _align_environment(current, baseline, [d.field for d in differences])
    # groups are defined over both sides, so a group missing now still has its own key
    keys = resolve_by(pd.concat([current, baseline], ignore_index=True))
    table, _, _ = compare(current, baseline, metric, keys)
    names = table.attrs["keys"]
    base = summarize(baseline, metric, keys)[[*names, "diverged"]].rename(columns={"diverged": "base_diverged"})
    failed = (current.assign(_failed=current["status"].eq("failed"))
              .groupby(keys, dropna=False)["_failed"].sum().rename("failed").reset_index())
    failed.columns = [*names, "failed"]
    table = table.merge(base, on=names, how="left").merge(failed, on=names, how="left")
    table, notes = _noise(table, current, baseline, keys, names, metric, tolerance, sigma)
    sign = -1 if lower_is_better(metric) else 1
    verdicts = []
    for row in table.itertuples(index=False):
        reasons = []
        if row.change == "missing":
            if "missing" in fail_on:
                reasons.append("missing")
        else:
            if pd.notna(row.delta) and sign * row.delta < -row.threshold:
                bound = f"{sigma:g}×se" if sigma * row.se > tolerance else "tolerance"  # NaN se: the tolerance
                reasons.append(f"regressed {row.delta:+.4f} (beyond {row.threshold:.4f} = {bound})")
            if "diverged" in fail_on and (row.diverged or 0) > 0 and not (row.base_diverged or 0) > 0:
                reasons.append("newly diverged")
            if "failed" in fail_on and (row.failed or 0) > 0:
                reasons.append("failed")
        verdicts.append("; ".join(reasons) or "ok")
    table["verdict"] = verdicts
    table["failed"] = table["failed"].fillna(0).astype(int)
    columns = [*names, "base_n", "base_mean", "n", "mean", "delta", "se", "threshold", "base_diverged", "diverged",
               "failed", "verdict"]
    return CheckResult(table[columns], names, metric, tolerance, sigma, differences, strict_env, notes)


def _number(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.4f}"


def _noise(table: pd.DataFrame, current: pd.DataFrame, baseline: pd.DataFrame, keys: list[str], names: list[str],
           metric: str, tolerance: float, sigma: float) -> tuple[pd.DataFrame, list[str]]:
    """``table`` with ``se`` (of the difference of the seed means) and ``threshold`` (the drop
    a group may show), and notes on the groups whose ``se`` had to come from elsewhere."""
    images = ACCURACY_IMAGES.get(metric)
    table = (table.merge(_images(current, keys, names, metric, images, "images"), on=names, how="left")
             .merge(_images(baseline, keys, names, metric, images, "base_images"), on=names, how="left"))
    now = _variance(table["n"], table["std"], table["mean"], table["images"])
    then = _variance(table["base_n"], table["base_std"], table["base_mean"], table["base_images"])
    table["se"] = (now + then) ** 0.5
    compared = table["delta"].notna()
    table["threshold"] = (sigma * table["se"]).clip(lower=tolerance).fillna(tolerance).where(compared)
    one_seed = compared & ((table["n"] == 1) | (table["base_n"] == 1))
    notes = []
    if (one_seed & table["se"].notna()).any():
        notes.append(f"se: a side with a single seed has no sample std; its binomial standard error "
                     f"sqrt(p(1-p)/{images}) stands in")
    unknown = int((compared & table["se"].isna()).sum())
    if unknown:
        why = "is not an accuracy" if images is None else f"has no {images} column"
        notes.append(f"se: {unknown} group(s) have a single seed on a side and {metric} {why}: "
                     f"judged by the tolerance {tolerance:g} alone")
    return table, notes


def _images(runs: pd.DataFrame, keys: list[str], names: list[str], metric: str, column: str | None,
            name: str) -> pd.DataFrame:
    """Per group, the number of images its runs' accuracy was measured on (NaN if unknown)."""
    from .stats import FINISHED, distinct_runs, run_key

    runs = distinct_runs(runs, run_key(runs, keys))
    if column is None or column not in runs or runs.empty:
        counts = runs[keys].drop_duplicates().assign(**{name: float("nan")})
    else:
        done = runs[runs["status"].isin(FINISHED) & runs[metric].notna()]
        counts = done.groupby(keys, dropna=False)[column].min().rename(name).reset_index()
    counts.columns = [*names, name]
    return counts


def _variance(n: pd.Series, std: pd.Series, mean: pd.Series, images: pd.Series) -> pd.Series:
    """The squared standard error of one side's seed mean: ``std²/n`` over two seeds or more,
    the binomial ``p(1-p)/images`` for one (NaN where ``images`` is unknown), NaN for none."""
    binomial = (mean * (1 - mean) / images).where(n == 1)
    return (std ** 2 / n).where(n >= 2, binomial)


def env_differences(current: pd.DataFrame, baseline: pd.DataFrame) -> list[EnvDifference]:
    """The ``ENVIRONMENT`` fields whose values differ between the two sides' finished runs.
    A field a side does not record (an older export) is not compared."""
    differences = []
    for name in ENVIRONMENT:
        now, then = _env_values(current, name), _env_values(baseline, name)
        if now and then and now != then:
            differences.append(EnvDifference(name, ", ".join(sorted(then)), ", ".join(sorted(now))))
    return differences


def _env_values(runs: pd.DataFrame, column: str) -> set[str]:
    from .stats import FINISHED, fallback_labels

    if column not in runs:
        return set()
    done = runs[runs["status"].isin(FINISHED)] if "status" in runs else runs
    values = done[column]
    if column == "device":
        values = values.dropna().astype(str).str.split(":").str[0]
    elif column == "dataset":  # the data used; where it stood in for other data, both (mnist→mnist-sample)
        fallback = fallback_labels(done)
        values = values.astype(object).where(fallback.isna(), fallback + " (fallback)")
    return {str(v) for v in values.dropna()}


def _align_environment(current: pd.DataFrame, baseline: pd.DataFrame,
                       fields: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave out of the grouping the environment settings (``precision``, ``dataset``) that
    differ between the sides but hold one value on each: the groups then still match and the
    difference is an environment difference, not every group "missing". A setting that
    varies within a side is an axis of the sweep and stays a grouping key."""
    from ..columns import SETTING_COLUMNS

    drop = [f for f in fields if f in SETTING_COLUMNS
            and all(f not in df or df[f].nunique(dropna=False) <= 1 for df in (current, baseline))]
    return current.drop(columns=drop, errors="ignore"), baseline.drop(columns=drop, errors="ignore")


def check_cases(result: CheckResult, suite: str) -> list[Case]:
    """A JUnit testcase per compared group, and one for the environment when
    ``strict_env`` makes its differences a failure."""
    cases = []
    for _, row in result.table.iterrows():
        name = " ".join(f"{k}={row[k]}" for k in result.keys)
        failure = None if row["verdict"] == "ok" else f"{row['verdict']} ({result.metric}: baseline " \
            f"{row['base_mean']:.4f}, now {row['mean']:.4f}, tolerance {result.tolerance:g}, " \
            f"{result.sigma:g}×se {_number(result.sigma * row['se'])})"
        cases.append(Case(name, suite, 0.0, failure))
    if result.env_failed:
        cases.append(Case("environment", suite, 0.0, "; ".join(map(str, result.env_differences))))
    return cases
