"""Sweeps in CI: shards, time budgets, merging shard results, JUnit XML and Markdown output.

* ``--shard K/N`` keeps the runs whose ``run_id`` (a hex hash) is ``K-1`` modulo ``N``:
  N jobs over the same config cover the grid exactly once, whatever the grid, and a run
  stays in its shard when other points are added or removed.
* ``--time-budget 15m`` starts no new run once the budget is spent, lets the runs in
  flight finish, and exits with :data:`~initsweep.errors.EXIT_BUDGET` (75); the next
  invocation resumes where it stopped.
* ``merge`` copies the current rows of shard results (with their epochs and layers) into
  one results folder; a run already there with the same result is skipped, one with a
  different result is a conflict, reported and left as it was.
"""

from __future__ import annotations

import html
import math
import re
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from .errors import InitsweepError, OptionError
from .store import CURRENT_ROWS, DB_NAME, FINISHED, Store

# ---------------------------------------------------------------- shards and budgets


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``; K is 1-based."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise OptionError("shard", text, "expected K/N, e.g. 1/4")
    k, n = int(match[1]), int(match[2])
    if n < 1:
        raise OptionError("shard", text, "N must be at least 1")
    if not 1 <= k <= n:
        raise OptionError("shard", text, f"K must be between 1 and {n}")
    return k, n


def in_shard(run_id: str, k: int, n: int) -> bool:
    return int(run_id, 16) % n == k - 1


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"2.5h"`` or plain seconds -> seconds."""
    text = (text or "").strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = _DURATION.findall(text)
        if not parts or "".join(f"{v}{u}" for v, u in parts) != text.replace(" ", ""):
            raise OptionError("time_budget", text, "expected a duration such as 90s, 15m or 1h30m")
        seconds = sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)
    if seconds <= 0:
        raise OptionError("time_budget", text, "must be more than zero")
    return seconds


# ---------------------------------------------------------------- merge


@dataclass
class MergeReport:
    added: int = 0
    identical: int = 0
    conflicts: list[str] = field(default_factory=list)
    sources: int = 0


_SAME_RESULT = ("status", "test_acc", "test_loss", "steps", "diverged_step")


def _same(a: sqlite3.Row, b: sqlite3.Row) -> bool:
    for col in _SAME_RESULT:
        x, y = a[col], b[col]
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=0, abs_tol=0):
                return False
        elif x != y:
            return False
    return True


def merge(sources: Iterable[str | Path], into: str | Path) -> MergeReport:
    """Copy every source's current runs into ``into`` (created if needed); idempotent.

    A merge that fails creates and changes nothing: every source is opened and checked
    (it exists, is an initsweep store, is not damaged) before the target is touched, and
    the copy is one transaction."""
    report = MergeReport()
    target_path = (Path(into) / DB_NAME).resolve()
    opened: list[tuple[str, Store]] = []
    try:
        for source in sources:
            opened.append((str(source), Store(source, create=False)))
            if opened[-1][1].path.resolve() == target_path:
                raise InitsweepError(f"merge: {source} is the target folder itself")
        with Store(into) as target, target._write() as conn:
            run_cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)") if r[1] != "row_id"]
            for name, src in opened:
                report.sources += 1
                with src.guard():
                    _merge_one(src.conn, conn, run_cols, report, name)
    finally:
        for _, src in opened:
            src.close()
    return report


def _merge_one(src: sqlite3.Connection, conn: sqlite3.Connection, run_cols: list[str], report: MergeReport,
               name: str) -> None:
    src_cols = {r[1] for r in src.execute("PRAGMA table_info(runs)")}
    rows = src.execute(f"SELECT * FROM runs WHERE row_id IN ({CURRENT_ROWS}) AND status != 'running' "
                       "ORDER BY row_id").fetchall()
    for row in rows:
        have = conn.execute(
            "SELECT * FROM runs WHERE sweep = ? AND run_id = ? ORDER BY row_id DESC LIMIT 1",
            (row["sweep"], row["run_id"])).fetchone()
        if have is not None and have["status"] in FINISHED:
            if _same(have, row):
                report.identical += 1
            else:
                report.conflicts.append(
                    f"{row['sweep']}/{row['run_id']}: {name} has {row['status']} test_acc={row['test_acc']}, "
                    f"the merged results have {have['status']} test_acc={have['test_acc']} (kept)")
            continue
        if have is not None and row["status"] not in FINISHED:
            report.identical += 1  # an unfinished attempt adds nothing to what is there
            continue
        cols = [c for c in run_cols if c in src_cols]
        cursor = conn.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                              [row[c] for c in cols])
        new_id = cursor.lastrowid
        for table in ("epochs", "layers"):
            target_cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            source_cols = {r[1] for r in src.execute(f"PRAGMA table_info({table})")}
            cols_t = [c for c in target_cols if c in source_cols]
            for child in src.execute(f"SELECT * FROM {table} WHERE row_id = ?", (row["row_id"],)):
                values = [new_id if c == "row_id" else child[c] for c in cols_t]
                conn.execute(f"INSERT INTO {table} ({', '.join(cols_t)}) VALUES ({', '.join('?' * len(cols_t))})",
                             values)
        report.added += 1


# ---------------------------------------------------------------- JUnit XML and Markdown


@dataclass(frozen=True)
class Case:
    """One JUnit testcase: a run, or a compared group of runs."""

    name: str
    classname: str
    seconds: float = 0.0
    failure: str | None = None  # message when it failed
    skipped: str | None = None


def junit_xml(suite: str, cases: list[Case]) -> str:
    """A JUnit XML document (the schema CI systems read: testsuites > testsuite > testcase)."""
    failures = sum(c.failure is not None for c in cases)
    skipped = sum(c.skipped is not None for c in cases)
    total = sum(c.seconds for c in cases)
    suites = ET.Element("testsuites", name="initsweep", tests=str(len(cases)), failures=str(failures),
                        errors="0", skipped=str(skipped), time=f"{total:.3f}")
    node = ET.SubElement(suites, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures),
                         errors="0", skipped=str(skipped), time=f"{total:.3f}")
    for case in cases:
        element = ET.SubElement(node, "testcase", name=case.name, classname=case.classname, time=f"{case.seconds:.3f}")
        if case.failure is not None:
            ET.SubElement(element, "failure", message=case.failure).text = case.failure
        elif case.skipped is not None:
            ET.SubElement(element, "skipped", message=case.skipped)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def run_cases(df: pd.DataFrame, fail_on: set[str] = frozenset({"failed", "diverged"})) -> list[Case]:
    """A testcase per run of a results frame; failed/diverged (as chosen) are failures."""
    cases = []
    for row in df.itertuples(index=False):
        label = " ".join(str(getattr(row, c)) for c in ("init_label", "activation_label") if hasattr(row, c))
        name = f"{label} depth={row.depth} seed={row.seed} [{row.run_id}]"
        failure = skipped = None
        if row.status in fail_on:
            detail = f" at step {int(row.diverged_step)}" if row.status == "diverged" and pd.notna(row.diverged_step) else ""
            failure = f"{row.status}{detail}" + (f": {row.error}" if isinstance(row.error, str) and row.error else "")
        elif row.status in ("interrupted", "running"):
            skipped = row.status
        seconds = float(row.wall_seconds) if pd.notna(row.wall_seconds) else 0.0
        cases.append(Case(name, row.sweep, seconds, failure, skipped))
    return cases


def markdown_table(df: pd.DataFrame, columns: list[str], floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        if isinstance(v, float):
            return format(v, floatfmt)
        return html.escape(str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in df[columns].itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def sweep_summary_markdown(sweep: str, df: pd.DataFrame, best: pd.DataFrame, note: str = "") -> str:
    counts = df.status.value_counts().to_dict()
    text = f"## initsweep: {sweep}\n\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n\n"
    if note:
        text += note + "\n\n"
    if not best.empty:
        text += "Best setting per depth (mean test accuracy over seeds):\n\n"
        text += markdown_table(best.rename(columns={"mean": "test_acc", "n": "seeds"}),
                               ["depth", "setting", "test_acc", "seeds"])
    return text


# ---------------------------------------------------------------- regression check

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
    from .report import compare, lower_is_better, resolve_by, summarize

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
