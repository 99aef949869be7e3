"""``initsweep check``: the CI regression gate, current runs against a baseline.

A group regresses when its seed mean falls below the baseline's by more than the
tolerance; a run that newly diverged or failed, or went missing, fails the gate when
``--fail-on`` names it. The result is also JUnit test cases (``ci.Case``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from ..errors import OptionError
from .ci import Case


CHECKS = ("diverged", "failed", "missing")


@dataclass
class CheckResult:
    """One row per group of runs (matched by settings) and why the check failed, if it did."""

    table: pd.DataFrame  # keys..., base_mean, mean, delta, base_diverged, diverged, failed, verdict
    keys: list[str]
    metric: str
    tolerance: float

    @property
    def failures(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] != "ok"]


def check_against(current: pd.DataFrame, baseline: pd.DataFrame, *, metric: str = "test_acc",
                  tolerance: float = 0.01, fail_on: Iterable[str] = CHECKS) -> CheckResult:
    """Compare seed means per group with a baseline; a group fails on a regression beyond
    ``tolerance`` (in the metric's units and direction), or, as ``fail_on`` asks, on a newly
    diverged or failed run or on a group the baseline has and the current runs lack."""
    from .stats import compare, lower_is_better, resolve_by, summarize

    fail_on = set(fail_on)
    unknown = fail_on - set(CHECKS)
    if unknown:
        raise OptionError("fail_on", sorted(unknown)[0], f"use any of {', '.join(CHECKS)}")
    if tolerance < 0 or not math.isfinite(tolerance):
        raise OptionError("tolerance", tolerance, "must be a number >= 0")
    # groups are defined over both sides, so a group missing now still has its own key
    keys = resolve_by(pd.concat([current, baseline], ignore_index=True))
    table, _, _ = compare(current, baseline, metric, keys)
    names = table.attrs["keys"]
    base = summarize(baseline, metric, keys)[[*names, "diverged"]].rename(columns={"diverged": "base_diverged"})
    failed = (current.assign(_failed=current["status"].eq("failed"))
              .groupby(keys, dropna=False)["_failed"].sum().rename("failed").reset_index())
    failed.columns = [*names, "failed"]
    table = table.merge(base, on=names, how="left").merge(failed, on=names, how="left")
    sign = -1 if lower_is_better(metric) else 1
    verdicts = []
    for row in table.itertuples(index=False):
        reasons = []
        if row.change == "missing":
            if "missing" in fail_on:
                reasons.append("missing")
        else:
            if pd.notna(row.delta) and sign * row.delta < -tolerance:
                reasons.append(f"regressed {row.delta:+.4f}")
            if "diverged" in fail_on and (row.diverged or 0) > 0 and not (row.base_diverged or 0) > 0:
                reasons.append("newly diverged")
            if "failed" in fail_on and (row.failed or 0) > 0:
                reasons.append("failed")
        verdicts.append("; ".join(reasons) or "ok")
    table["verdict"] = verdicts
    table["failed"] = table["failed"].fillna(0).astype(int)
    columns = [*names, "base_n", "base_mean", "n", "mean", "delta", "base_diverged", "diverged", "failed", "verdict"]
    return CheckResult(table[columns], names, metric, tolerance)


def check_cases(result: CheckResult, suite: str) -> list[Case]:
    """A JUnit testcase per compared group."""
    cases = []
    for _, row in result.table.iterrows():
        name = " ".join(f"{k}={row[k]}" for k in result.keys)
        failure = None if row["verdict"] == "ok" else f"{row['verdict']} ({result.metric}: baseline " \
            f"{row['base_mean']:.4f}, now {row['mean']:.4f}, tolerance {result.tolerance})"
        cases.append(Case(name, suite, 0.0, failure))
    return cases
