"""What a CI job reads after a sweep: JUnit XML (one testcase per run) and the Markdown
summary (``--summary-md``, GitHub's step summary). Shards and time budgets live in
``sweep/planner.py``, ``merge`` in ``results/merge.py``, the gate in ``check.py``.
"""

from __future__ import annotations

import html
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pandas as pd

from .formats import markdown_table


# ---------------------------------------------------------------- merge


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


def summary_table(df: pd.DataFrame, columns: list[str], floatfmt: str = ".4f") -> str:
    """The CI summary's Markdown table of ``columns``: floats at ``floatfmt``, missing as
    ``–``, text HTML-escaped (GitHub renders HTML in a summary), written by the report's
    one table writer without alignment marks."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        if isinstance(v, float):
            return format(v, floatfmt)
        return html.escape(str(v))

    cells = pd.DataFrame([[cell(v) for v in row] for row in df[columns].itertuples(index=False)], columns=columns)
    return markdown_table(cells, align=False) + "\n"


def sweep_summary_markdown(sweep: str, df: pd.DataFrame, best: pd.DataFrame, note: str = "") -> str:
    counts = df.status.value_counts().to_dict()
    text = f"## initsweep: {sweep}\n\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "\n\n"
    if note:
        text += note + "\n\n"
    if not best.empty:
        text += "Best setting per depth (mean test accuracy over seeds):\n\n"
        text += summary_table(best.rename(columns={"mean": "test_acc", "n": "seeds"}),
                               ["depth", "setting", "test_acc", "seeds"])
    return text


# ---------------------------------------------------------------- regression check


