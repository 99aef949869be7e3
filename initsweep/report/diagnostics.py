"""The diagnostics stored with a report's runs, judged per group over the group's seeds.

Each run is one seed, probed at init (``layers`` rows of phase ``init``, see docs/diagnostics.md).
A group's verdict is not one seed's: :func:`seed_verdicts` refits each run's per-layer
factors from its stored rows and judges the group as ``initsweep probe --seeds`` judges a
point (``verdicts.over_seeds``: the rules on the median over the seeds), so the report
says ``exploding (2 of 3 seeds)`` and shows each factor's median and range (min-max)
over the seeds: ``forward_factor``, ``forward_factor_min``, ``forward_factor_max`` and the
same for ``backward_factor`` (a group that spans other settings too, ``--by init`` over several
depths, takes the median over all its runs and counts runs: ``dead (4 of 6 runs)``). Groups without stored layers (an export file, diagnostics
switched off) keep the runs' common verdict from ``stats.summarize``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd

from ..verdicts import over_seeds
from .stats import ALIASES, Report, distinct_runs, run_key

FACTOR_COLUMNS = ["forward_factor", "forward_factor_min", "forward_factor_max",
                  "backward_factor", "backward_factor_min", "backward_factor_max"]


def _init_rows(layers: pd.DataFrame) -> dict[int, list[dict[str, Any]]]:
    """Per attempt (``row_id``), its init-phase layer rows in layer order, NULL as None."""
    init = layers[layers["phase"] == "init"].sort_values(["row_id", "layer"])
    init = init.astype(object).where(init.notna(), None)
    return {int(row_id): rows.to_dict("records") for row_id, rows in init.groupby("row_id", sort=False)}


def seed_verdicts(runs: pd.DataFrame, layers: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group of ``runs`` that has stored init diagnostics: the summary's
    ``keys`` (friendly names), ``verdict`` (over the seeds) and :data:`FACTOR_COLUMNS`."""
    columns = [*keys, "verdict", *FACTOR_COLUMNS]
    if layers is None or layers.empty or "row_id" not in runs:
        return pd.DataFrame(columns=columns)
    raw = [ALIASES.get(k, k) for k in keys]
    probes = _init_rows(layers)
    rows = []
    distinct = distinct_runs(runs, run_key(runs, raw))
    for values, group in distinct.groupby(raw, dropna=False, sort=False):
        seeds = [{"layers": probes[int(r["row_id"])], "verdict": r.get("verdict")}
                 for _, r in group.iterrows() if int(r["row_id"]) in probes]
        if not seeds:
            continue
        agg = over_seeds(seeds)
        values = values if isinstance(values, tuple) else (values,)
        only_seeds = "seed" in group and group["seed"].nunique() == len(group)  # else e.g. --by init over depths
        rows.append([*values, agg.counted("seeds" if only_seeds else "runs"), agg.forward.median, agg.forward.low, agg.forward.high,
                     agg.backward.median, agg.backward.low, agg.backward.high])
    return pd.DataFrame(rows, columns=columns)


def _beside(frame: pd.DataFrame, judged: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``frame`` with the judged groups' verdicts and factors (its rows, order and attrs kept)."""
    merged = frame.merge(judged.add_suffix("_seeds").rename(columns={f"{k}_seeds": k for k in keys}),
                         on=keys, how="left")
    merged.index = frame.index
    merged["verdict"] = merged["verdict_seeds"].where(merged["verdict_seeds"].notna(), merged.get("verdict"))
    merged = merged.drop(columns="verdict_seeds").rename(columns={f"{c}_seeds": c for c in FACTOR_COLUMNS})
    merged.attrs.update(frame.attrs)
    return merged


def with_seed_verdicts(report: Report, layers: pd.DataFrame | None) -> Report:
    """The report with every judged group's verdict over its seeds and its factors beside it."""
    keys = list(report.summary.attrs.get("keys", []))
    if not keys or "verdict" in keys:  # grouped by each run's own verdict: nothing to judge over seeds
        return report
    judged = seed_verdicts(report.runs, layers, keys)
    if judged.empty:
        return report
    return replace(report, summary=_beside(report.summary, judged, keys), table=_beside(report.table, judged, keys))
