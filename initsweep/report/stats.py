"""Turn the runs table into answers: which setting is best, at which depth, and how sure.

Pure pandas in, pandas out; the CLI and the renderers (``cli/render_report.py``, ``formats.py``,
``plots.py``) turn the frames into tables, files and figures.

Statistics, so a reviewer can check them: a group is every run that shares the grouping
settings; the seed is what varies inside it. Runs that finished (``ok`` and ``diverged``)
count: a diverged run is evaluated where it stopped, so its accuracy is a real result that
a divergent setting should pay for. ``failed``/``interrupted``/``running`` rows are counted
in ``unfinished`` and left out of the statistics. ``n`` is the number of finished runs whose
metric is a number (a diverged run's loss may be NaN); ``std`` is the sample standard
deviation (ddof=1) over those, NaN for a single run, never a made-up 0; ``ci_low``/``ci_high``
the Student-t interval of the mean (``half_width``), NaN below two runs; ``mark`` the best
cell's ``★`` or the ties' ``≈`` (``best_marks``: paired t-tests by seed). A run stored by two
sweeps (same ``run_id``: same resolved settings) counts once, unless the groups keep the
sweeps apart (grouped by ``sweep``): then runs are keyed by (sweep, run_id), the store's key,
and it counts in each of its sweeps.

Runs trained on other data than their config asked for (``data.fallback``) are never
silent: the summary then has a ``data_fallback`` column, ``fashion-mnist→mnist-sample``
on each affected group, and every view marks those groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..columns import SETTING_COLUMNS
from ..errors import OptionError, ParamError
from ..registry import did_you_mean

# Never grouped by: the seed is what groups average over; a choice's name and parameters are
# grouped through its label (``leaky_relu(negative_slope=0.2)``), which carries both.
_NOT_GROUPED = {"seed", "init", "init_params", "activation", "activation_params", "bias", "bias_params"}
FINISHED = ("ok", "diverged")
# The friendly axis names users type; a summary names its label columns by them.
ALIASES = {"init": "init_label", "activation": "activation_label", "bias": "bias_label"}
_FRIENDLY = {label: name for name, label in ALIASES.items()}
CORE_AXES = ("init_label", "activation_label", "depth")
STAT_COLUMNS = ["n", "mean", "std", "ci_low", "ci_high", "min", "max", "runs", "diverged", "diverged_rate",
                "unfinished", "verdict", "mark"]
# The marks of :func:`best_marks`: better than every other cell of its table / not distinguishable from the best.
BEST, TIED = "★", "≈"
ALPHA = 0.05  # the paired test's level for the marks


def varying_settings(df: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    """The setting columns that take more than one value in ``df`` (the sweep's axes)."""
    cols = []
    for col in SETTING_COLUMNS:
        if col in df and col not in _NOT_GROUPED and col not in exclude and df[col].nunique(dropna=False) > 1:
            cols.append(col)
    return cols


# Stored as 0/1 INTEGER, written true/false in a config.
_BOOLEAN_SETTINGS = {"nesterov"}


def setting_value(col: str, value: Any) -> str | None:
    """A setting's value as the user wrote it, or None where the run left it unset.

    A frame that mixes sweeps holds an integer setting that one sweep left unset as floats
    with NaN (``test_limit`` 256.0 and nan): integers print as integers, unset values not.
    """
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if col in _BOOLEAN_SETTINGS:
        return str(bool(value))
    if SETTING_COLUMNS.get(col) == "INTEGER" and float(value).is_integer():
        return str(int(value))
    return repr(float(value)) if SETTING_COLUMNS.get(col) == "REAL" else str(value)


def setting_text(names: list[str], values: Any, sep: str = " ") -> str:
    """``init=he width=8``: settings by their friendly names, unset ones left out."""
    pairs = ((friendly(col), setting_value(col, value)) for col, value in zip(names, values))
    return sep.join(f"{name}={text}" for name, text in pairs if text is not None)


def lower_is_better(metric: str) -> bool:
    """Losses and times are better small; accuracies (and everything else) large."""
    return "loss" in metric or metric.endswith("seconds")


def best_per_depth(df: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """For each depth, the setting (all other axes) with the best mean ``metric`` over seeds.

    Runs that failed, are running or were interrupted are left out; diverged runs count
    (with the accuracy of the model where it stopped).
    """
    done = df[df["status"].isin(FINISHED)]
    if done.empty:
        return pd.DataFrame(columns=["depth", "setting", "mean", "n"])
    by = varying_settings(done, exclude=("depth",))
    keys = ["depth", *by]
    grouped = done.groupby(keys, dropna=False)[metric].agg(["mean", "count"]).reset_index()
    rows = []
    for depth, group in grouped.groupby("depth"):
        pick = group["mean"].idxmin if lower_is_better(metric) else group["mean"].idxmax
        best = group.loc[pick()] if group["mean"].notna().any() else group.iloc[0]
        setting = setting_text(by, [best[c] for c in by]) or "(single setting)"
        rows.append({"depth": depth, "setting": setting, "mean": best["mean"], "n": int(best["count"])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------- grouping


def check_metric(df: pd.DataFrame, metric: str) -> str:
    """``metric`` if it is a numeric column of ``df``; else one clear error line."""
    if metric not in df:
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        raise OptionError("metric", metric, f"unknown column {metric!r}{did_you_mean(metric, numeric)}",
                          repeat_value=False)
    if not pd.api.types.is_numeric_dtype(df[metric]) and df[metric].notna().any():
        raise OptionError("metric", metric, f"column {metric!r} is not numeric", repeat_value=False)
    return metric


def resolve_by(df: pd.DataFrame, by: str | list[str] | None = None, param: str = "by") -> list[str]:
    """The run columns to group by: the given names (``init`` meaning ``init_label``), or by
    default init, activation and depth plus every other setting that varies except the seed.
    A string is one column, or several comma-separated as on the command line. ``param`` is
    the parameter the names came from, for the error (``pivot`` lists columns too)."""
    if isinstance(by, str):  # iterating a str would group by its letters
        by = by.split(",")
    if not by:
        return [c for c in CORE_AXES if c in df] + varying_settings(df, exclude=CORE_AXES)
    keys = []
    for name in (n.strip() for n in by if n.strip()):
        col = ALIASES.get(name, name)
        if col not in df:
            options = [*ALIASES, *df.columns]
            raise OptionError(param, name, f"unknown column {name!r}{did_you_mean(name, options)}", repeat_value=False)
        if col not in keys:
            keys.append(col)
    return keys


def friendly(col: str) -> str:
    """The name a summary gives a run column: ``init_label`` -> ``init``."""
    return _FRIENDLY.get(col, col)


def run_key(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """What makes a row one run: ``(sweep, run_id)`` when the groups keep sweeps apart (a run
    stored by two sweeps then counts in each), else ``run_id`` (the same experiment in every
    sweep, so it counts once)."""
    return ["sweep", "run_id"] if "sweep" in keys and "sweep" in df else ["run_id"]


def distinct_runs(df: pd.DataFrame, key: list[str] | None = None) -> pd.DataFrame:
    """One row per run (``key``, default ``run_id``): its latest finished row if any, else its latest row."""
    if "run_id" not in df or df.empty:
        return df
    finished = df["status"].isin(FINISHED) if "status" in df else pd.Series(True, index=df.index)
    order = df.assign(_finished=finished, _pos=range(len(df)))
    order = order.sort_values(["_finished", "row_id" if "row_id" in df else "_pos"], kind="stable")
    return (order.drop_duplicates(key or ["run_id"], keep="last").sort_values("_pos")
            .drop(columns=["_finished", "_pos"]))


def count_runs(runs: pd.DataFrame, keys: list[str]) -> str:
    """``32 runs``: what a report's statistics count, said without ambiguity when sweeps
    share run ids (the same config stored under two sweep names)."""
    ids = runs["run_id"].nunique() if "run_id" in runs else len(runs)
    pairs = len(runs.drop_duplicates(["sweep", "run_id"])) if {"sweep", "run_id"} <= set(runs.columns) else ids
    if pairs == ids:
        return f"{ids} runs"
    if run_key(runs, keys) == ["run_id"]:
        return f"{ids} runs ({pairs} stored: a run id in several sweeps counts once)"
    return f"{pairs} runs ({ids} distinct ids: a run id in several sweeps counts in each)"


def _consensus(verdicts: pd.Series) -> Any:
    """A group's verdict: the runs' common one, or the most frequent with its share."""
    counts = verdicts.dropna().value_counts()
    if counts.empty:
        return None
    if len(counts) == 1:
        return counts.index[0]
    return f"{counts.index[0]} ({counts.iloc[0]}/{counts.sum()})"


def _sorted_like(frame: pd.DataFrame, reference: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Numbers ascending; text in the order ``reference`` lists it (the sweep's order), not A-Z."""
    ranks = {c: {v: i for i, v in enumerate(pd.unique(reference[c]))} for c in keys
             if not pd.api.types.is_numeric_dtype(reference[c])}

    def key(col: pd.Series) -> pd.Series:
        return col.map(ranks[col.name]) if col.name in ranks else col

    return frame.sort_values(keys, key=key, kind="stable", na_position="last").reset_index(drop=True)


def fallback_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, ``requested→used`` when it trained on other data than its config asked for
    (the store's ``dataset_requested`` vs ``dataset``), else None."""
    if "dataset_requested" not in runs or "dataset" not in runs:
        return pd.Series(None, index=runs.index, dtype=object)
    swapped = runs["dataset_requested"].notna() & (runs["dataset_requested"] != runs["dataset"])
    labels = runs["dataset_requested"].astype(str) + "→" + runs["dataset"].astype(str)
    return labels.where(swapped, None).astype(object)


def _fallback_cell(labels: pd.Series) -> str | None:
    """A group's fallback mark: its runs' ``requested→used`` pairs, with the share when not all."""
    hit = labels.dropna()
    if hit.empty:
        return None
    text = ", ".join(pd.unique(hit))
    return text if len(hit) == len(labels) else f"{text} ({len(hit)}/{len(labels)} runs)"


def check_ci(ci: Any) -> float:
    """The interval's level, a number strictly between 0 and 1 (0.95 for a 95% interval)."""
    if isinstance(ci, bool) or not isinstance(ci, (int, float)) or not 0 < ci < 1:
        raise OptionError("ci", ci, "the interval's level must lie strictly between 0 and 1, e.g. 0.95")
    return float(ci)


def half_width(std: Any, n: Any, ci: float = 0.95) -> Any:
    """Half the Student-t interval of a seed mean, t_{(1+ci)/2, n-1} · std / √n (the mean ± it is
    the interval): NaN where n < 2, since one run says nothing about the spread. Takes scalars
    or Series (a Series in, a Series out)."""
    import numpy as np
    from scipy.stats import t

    count = np.asarray(pd.to_numeric(n, errors="coerce"), dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = np.where(count >= 2, count - 1, np.nan)
        half = t.ppf((1 + ci) / 2, dof) * np.asarray(std, dtype=float) / np.sqrt(count)
    return pd.Series(half, index=n.index) if isinstance(n, pd.Series) else float(half)


def best_marks(values: pd.DataFrame, keys: list[str], within: list[str], metric: str,
               alpha: float = ALPHA) -> list[str]:
    """``★``, ``≈`` or ``""`` for each group of ``values`` (one row per run: the ``keys``, ``pair``
    and ``value`` columns), groups in first-seen order; the one rule every format shows.

    A table is the groups that share the ``within`` keys (a pivot's depth), or all of them.
    Its best group (best mean, in the metric's direction) is compared with every other
    group by a paired t-test (``scipy.stats.ttest_rel``), pairing the runs with the same
    ``pair`` (the seed, and the settings that vary but are not keys). The best gets ``★`` only
    when it is better than every other group at ``alpha``; otherwise it and every group not
    distinguishable from it (p >= alpha, or fewer than 2 pairs: no test is possible) get
    ``≈``. A mean within seed noise is a tie, not a winner; a table of one group has no mark.
    """
    import warnings

    from scipy.stats import ttest_rel

    grouped = values.groupby(keys, dropna=False, sort=False)
    names = [key if isinstance(key, tuple) else (key,) for key, _ in grouped]
    means = grouped["value"].mean().tolist()
    by_pair = [group.groupby("pair", sort=False)["value"].mean().dropna() for _, group in grouped]
    where = [keys.index(col) for col in within]
    tables: dict[tuple, list[int]] = {}
    for i, name in enumerate(names):
        if not pd.isna(means[i]):
            tables.setdefault(tuple(None if pd.isna(name[j]) else name[j] for j in where), []).append(i)
    marks = [""] * len(names)
    pick = min if lower_is_better(metric) else max
    for members in tables.values():
        if len(members) < 2:
            continue
        best = pick(members, key=lambda i: means[i])
        tied = []
        for i in members:
            if i == best:
                continue
            common = by_pair[best].index.intersection(by_pair[i].index)
            with warnings.catch_warnings():  # equal pairs (p is NaN: a tie) and constant differences (p = 0)
                warnings.simplefilter("ignore", RuntimeWarning)
                p = ttest_rel(by_pair[best][common], by_pair[i][common]).pvalue if len(common) >= 2 else float("nan")
            if not p < alpha:
                tied.append(i)
        if tied:
            for i in (best, *tied):
                marks[i] = TIED
        else:
            marks[best] = BEST
    return marks


def summarize(df: pd.DataFrame, metric: str = "test_acc", by: str | list[str] | None = None,
              ci: float = 0.95, within: list[str] | None = None) -> pd.DataFrame:
    """Seed statistics of ``metric`` per group of runs (see the module docstring for the rules).

    ``by`` takes run columns or the friendly ``init``/``activation``/``bias`` (their labels),
    as a list or a string (``"init"``, or ``"init,depth"`` as on the command line); by
    default every setting that varies except the seed. One row per group, the keys named
    friendly, then ``n, mean, std, ci_low, ci_high, min, max, runs, diverged, diverged_rate,
    unfinished, verdict, mark``: ``ci_low``/``ci_high`` the Student-t interval of the mean at
    level ``ci`` (empty for n < 2), ``mark`` the best group's ``★`` or the ties' ``≈`` of
    :func:`best_marks`, in each table of the groups sharing the ``within`` keys (default: one table).

    >>> summarize(load_results("results"), "test_acc", ["init", "activation", "depth"])  # doctest: +SKIP
    """
    check_metric(df, metric)
    ci = check_ci(ci)
    keys = resolve_by(df, by)
    tables = resolve_by(df, within, "within") if within else []
    if any(col not in keys for col in tables):
        raise OptionError("within", within, f"names a column that is not a grouping key ({', '.join(keys)})")
    runs = distinct_runs(df, run_key(df, keys))
    if runs.empty:
        out = pd.DataFrame(columns=[*map(friendly, keys), *(c for c in STAT_COLUMNS if c not in keys)])
        out.attrs.update(metric=metric, keys=[friendly(k) for k in keys], ci=ci)
        return out
    status = runs["status"] if "status" in runs else pd.Series("ok", index=runs.index)
    done = status.isin(FINISHED)
    fallback = fallback_labels(runs)
    frame = runs[keys].assign(
        _value=pd.to_numeric(runs[metric], errors="coerce").where(done), _done=done,
        _diverged=status.eq("diverged"), _verdict=runs["verdict"] if "verdict" in runs else None,
        _fallback=fallback)
    grouped = frame.groupby(keys, dropna=False, sort=False)
    out = grouped.agg(n=("_value", "count"), mean=("_value", "mean"), std=("_value", "std"),
                      min=("_value", "min"), max=("_value", "max"), runs=("_done", "size"),
                      finished=("_done", "sum"), diverged=("_diverged", "sum"))
    if "verdict" not in keys:  # grouped by verdict, the key already is the verdict
        out["verdict"] = grouped["_verdict"].agg(_consensus)
    marked = fallback.notna().any()
    if marked:
        out["data_fallback"] = grouped["_fallback"].agg(_fallback_cell)
    pairs = [c for c in ["seed", *varying_settings(runs, exclude=tuple(keys))] if c in runs]
    values = frame[keys].assign(value=frame["_value"],
                                pair=runs[pairs].astype(str).agg("|".join, axis=1) if pairs else "")
    out["mark"] = best_marks(values, keys, tables, metric)
    out = out.reset_index()
    half = half_width(out["std"], out["n"], ci)
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    out["diverged_rate"] = (out["diverged"] / out["finished"]).where(out["finished"] > 0)
    out["unfinished"] = out["runs"] - out["finished"]
    stats = [c for c in STAT_COLUMNS if c not in keys] + (["data_fallback"] if marked else [])
    out = _sorted_like(out[[*keys, *stats]], runs, keys).rename(columns=friendly)
    out.attrs.update(metric=metric, keys=[friendly(k) for k in keys], ci=ci)
    return out


def order(summary: pd.DataFrame, sort: str | None = None, top: int | None = None) -> pd.DataFrame:
    """Sort by a column (``-col`` for descending) and keep the first ``top`` rows.

    With ``top`` and no ``sort``, the best groups come first (by mean, in the metric's
    direction), so ``--top 5`` means "the five best".
    """
    metric = summary.attrs.get("metric", "")
    if sort:
        col, descending = (sort[1:], True) if sort.startswith("-") else (sort, False)
        if col not in summary:
            raise OptionError("sort", sort, f"unknown column {col!r}{did_you_mean(col, summary.columns)} "
                                      f"(columns: {', '.join(summary.columns)})", repeat_value=False)
        summary = summary.sort_values(col, ascending=not descending, kind="stable", na_position="last")
    elif top is not None:
        summary = summary.sort_values("mean", ascending=lower_is_better(metric), kind="stable", na_position="last")
    if top is not None:
        summary = summary.head(top)
    return summary.reset_index(drop=True)


# ---------------------------------------------------------------------- pivot


def parse_pivot(spec: str) -> tuple[list[str], list[str]]:
    """``"init:activation"`` -> (["init"], ["activation"]); each side may list several, comma-separated."""
    parts = spec.split(":")
    sides = [[name.strip() for name in part.split(",") if name.strip()] for part in parts]
    if len(parts) != 2 or not all(sides):
        raise OptionError("pivot", spec, f"expected ROWS:COLS such as init:activation, got {spec!r}", repeat_value=False)
    return sides[0], sides[1]


def check_pivot(summary: pd.DataFrame, rows: list[str], cols: list[str]) -> None:
    """Both sides name grouping columns of ``summary``, none twice."""
    keys = summary.attrs.get("keys", [])
    for name in (*rows, *cols):
        if name not in keys:
            raise OptionError("pivot", name, f"{name!r} is not a grouping column (grouped by: {', '.join(keys)})",
                              repeat_value=False)
    if len({*rows, *cols}) < len(rows) + len(cols):
        raise OptionError("pivot", [*rows, *cols], "a column appears twice in ROWS:COLS", repeat_value=False)


def pivot_frame(summary: pd.DataFrame, rows: list[str], cols: list[str], value: str = "mean",
                also: tuple[str, ...] = ()) -> pd.DataFrame:
    """A wide table of ``value``: one row per (other keys..., rows...), one column per ``cols`` value.

    The other grouping keys (e.g. depth) stay as leading columns, so one frame holds every
    per-depth table; a column is named by its ``cols`` values joined with `` / ``. Each of
    ``also`` (e.g. ``ci_low``) follows as a column per ``cols`` value, named ``relu ci_low``.
    """
    check_pivot(summary, rows, cols)
    split = pivot_split(summary, rows, cols)
    frame = summary.assign(_col=summary[cols].astype(str).agg(" / ".join, axis=1))
    col_order = list(pd.unique(frame["_col"]))
    wide = frame.pivot_table(index=[*split, *rows], columns="_col", values=[value, *also], aggfunc="first",
                             dropna=False, sort=False)
    wide = wide.reindex(columns=[(v, c) for v in (value, *also) for c in col_order if (v, c) in wide.columns])
    wide.columns = [col if v == value else f"{col} {v}" for v, col in wide.columns]
    row_order = _sorted_like(frame[[*split, *rows]].drop_duplicates(), summary, split)
    wide = row_order.merge(wide.reset_index(), on=[*split, *rows], how="left")
    if "data_fallback" in summary:  # a wide row is marked when any of its cells is
        marks = summary.groupby([*split, *rows], dropna=False, sort=False)["data_fallback"].agg(
            lambda v: ", ".join(pd.unique(v.dropna())) or None)
        wide = wide.merge(marks.reset_index(), on=[*split, *rows], how="left")
    return wide


def pivot_split(summary: pd.DataFrame, rows: list[str], cols: list[str]) -> list[str]:
    """The grouping keys a pivot splits its tables by (depth in the default grid)."""
    return [k for k in summary.attrs.get("keys", []) if k not in rows and k not in cols]


@dataclass
class PivotBlock:
    """One pivot table (e.g. depth 8): row and column labels in sweep order, and per cell the
    summary row (``n, mean, std, ci_low, ci_high, diverged, mark, ...``) plus ``best`` (its
    ``mark`` is ``★``: marked by :func:`best_marks` within the blocks when :func:`build_report`
    made the summary)."""

    title: str
    row_labels: list[str]
    col_labels: list[str]
    cells: dict[tuple[str, str], pd.Series]


def pivot_blocks(summary: pd.DataFrame, rows: list[str], cols: list[str]) -> list[PivotBlock]:
    """The pivot view as blocks to render: one per value of the other keys (per depth)."""
    check_pivot(summary, rows, cols)
    split = pivot_split(summary, rows, cols)
    labelled = summary.assign(
        _row=summary[rows].astype(str).agg(" / ".join, axis=1),
        _col=summary[cols].astype(str).agg(" / ".join, axis=1),
        best=summary["mark"].eq(BEST) if "mark" in summary else False)
    groups = labelled.groupby(split, sort=False, dropna=False) if split else [((), labelled)]
    blocks = []
    for values, block in groups:
        values = values if isinstance(values, tuple) else (values,)
        title = ", ".join(f"{k} = {v}" for k, v in zip(split, values))
        cells = {(r["_row"], r["_col"]): r for _, r in block.iterrows()}
        blocks.append(PivotBlock(title, list(pd.unique(labelled["_row"])), list(pd.unique(labelled["_col"])), cells))
    return blocks


# ---------------------------------------------------------------------- baseline


def _setting_values(values: pd.Series) -> frozenset:
    """The distinct values of a setting, NULL as None (NaN != NaN would make every set differ)."""
    return frozenset(None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in values)


def _show_values(values: frozenset) -> str:
    return ", ".join(sorted(map(str, values)))


def check_like_with_like(current: pd.DataFrame, baseline: pd.DataFrame, keys: list[str]) -> None:
    """Refuse a comparison in which a group would average over a setting the two sides ran
    differently: a baseline with two learning rates against runs with one would compare
    each group with a mean over both lrs. Settings that are grouping keys are matched by
    the groups themselves; a group on one side only is new/missing, not averaged."""
    settings = [c for c in SETTING_COLUMNS
                if c not in keys and c not in _NOT_GROUPED and c in current and c in baseline]
    if not settings or not keys or current.empty or baseline.empty:
        return
    sides = [df.groupby(keys, dropna=False)[settings].agg(_setting_values).reset_index() for df in (current, baseline)]
    both = sides[0].merge(sides[1], on=keys, suffixes=("_now", "_then"))  # groups on both sides
    for col in settings:
        differs = both[both[f"{col}_now"] != both[f"{col}_then"]]
        if differs.empty:
            continue
        now, then = (frozenset().union(*differs[f"{col}_{side}"]) for side in ("now", "then"))
        name = friendly(col)
        raise ParamError(  # names three parameters: a template (see ParamError)
            f"{{baseline}}: {name} differs: the runs have {name} {_show_values(now)}, the baseline "
            f"{_show_values(then)}, and {name} is not a grouping column, so a group would average over it "
            f"(narrow both sides with {{where}}, or group by it: {{by={','.join(map(friendly, [*keys, col]))}}})")


def compare(current: pd.DataFrame, baseline: pd.DataFrame, metric: str = "test_acc",
            by: list[str] | None = None, ci: float = 0.95,
            within: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Compare two run tables group by group, and list the runs only one of them has.

    A setting that is not a grouping key must take the same values on both sides in every
    group they share (:func:`check_like_with_like`), else the comparison is refused.

    Returns ``(table, new_runs, missing_runs)``: ``table`` has the current statistics, the
    baseline's as ``base_n``/``base_mean``/``base_std``, ``delta = mean - base_mean`` and
    ``change``: better/worse (in the metric's direction), same (no difference beyond
    float noise), changed (a value on one side only, e.g. every loss NaN before), new (group
    only in the current runs) or missing (only in the baseline).
    """
    keys = resolve_by(current, by)
    absent = [k for k in keys if k not in baseline]
    if absent:
        raise OptionError("baseline", None, f"it has no column {absent[0]!r} (is it an initsweep export?)",
                          repeat_value=False)
    check_metric(baseline, metric)
    check_like_with_like(current, baseline, keys)
    now, then = summarize(current, metric, keys, ci, within), summarize(baseline, metric, keys, ci)
    names = now.attrs["keys"]
    base = then[[*names, "n", "mean", "std"]].rename(columns={"n": "base_n", "mean": "base_mean", "std": "base_std"})
    # an outer merge sorts its keys A-Z; put the groups back in the sweep's order
    table = _sorted_like(now.merge(base, on=names, how="outer", indicator=True), pd.concat([now, then]), names)
    table["delta"] = table["mean"] - table["base_mean"]
    sign = -1 if lower_is_better(metric) else 1
    tolerance = 1e-12 * table["base_mean"].abs().clip(lower=1.0)
    change = pd.Series("same", index=table.index, dtype=object)
    change[sign * table["delta"] > tolerance] = "better"
    change[sign * table["delta"] < -tolerance] = "worse"
    change[table["mean"].isna() != table["base_mean"].isna()] = "changed"
    change[table["_merge"] == "left_only"] = "new"
    change[table["_merge"] == "right_only"] = "missing"
    table["change"] = change
    table = table.drop(columns="_merge")
    table.attrs.update(metric=metric, keys=names, ci=now.attrs["ci"])
    key = run_key(current, keys) if run_key(baseline, keys) == run_key(current, keys) else ["run_id"]
    now_runs, then_runs = distinct_runs(current, key), distinct_runs(baseline, key)
    ids_now, ids_then = (pd.MultiIndex.from_frame(d[key]) for d in (now_runs, then_runs))
    run_cols = [c for c in ["run_id", "sweep", *keys, "seed", "status", metric] if c in current]
    new_runs = now_runs.loc[~ids_now.isin(ids_then), run_cols]
    missing_runs = then_runs.loc[~ids_then.isin(ids_now), [c for c in run_cols if c in baseline]]
    return table, new_runs.rename(columns=friendly), missing_runs.rename(columns=friendly)


@dataclass
class Report:
    """Everything a rendering of ``initsweep report`` needs.

    ``table`` is the flat view (the summary, or the baseline comparison), sorted and cut as
    asked; ``summary`` every group in sweep order; ``pivot`` the (rows, cols) axes when the
    view is a pivot, ``pivot_asked`` whether the user asked for it (csv/json then export the
    wide table instead of the flat one); ``sweeps`` and ``where`` what the runs were picked
    by (--sweep, --where), which the markdown and HTML reports state.
    """

    metric: str
    runs: pd.DataFrame
    summary: pd.DataFrame
    table: pd.DataFrame
    pivot: tuple[list[str], list[str]] | None = None
    pivot_asked: bool = False
    new_runs: pd.DataFrame | None = None
    missing_runs: pd.DataFrame | None = None
    sweeps: list[str] | None = None
    where: str | None = None

    @property
    def compared(self) -> bool:
        return self.new_runs is not None


def build_report(runs: pd.DataFrame, metric: str = "test_acc", by: list[str] | None = None,
                 pivot: str | None = None, sort: str | None = None, top: int | None = None,
                 baseline: pd.DataFrame | None = None, ci: float = 0.95) -> Report:
    """Summarize ``runs`` as ``initsweep report`` does (see its options).

    Without ``--by``/``--sort``/``--top``/``--baseline``, a grid with more than one init or
    activation is viewed as a pivot: one init x activation table per depth. The best-cell
    marks are drawn per pivot table (per depth), else over the whole table.
    """
    check_metric(runs, metric)
    keys = resolve_by(runs, by)
    axes = None
    if pivot and (sort or top):
        raise ParamError("{pivot} shows every cell; {sort} and {top} order the flat table "
                         "(drop {pivot}), and {where} narrows a pivot")
    if pivot:
        rows, cols = (resolve_by(runs, side, "pivot") for side in parse_pivot(pivot))
        keys += [col for col in (*rows, *cols) if col not in keys]
        axes = ([friendly(c) for c in rows], [friendly(c) for c in cols])
    if axes is None and not (by or sort or top or baseline is not None):
        grid = [c for c in ("init_label", "activation_label") if c in keys]
        if len(grid) == 2 and (runs["init_label"].nunique() > 1 or runs["activation_label"].nunique() > 1):
            axes = (["init"], ["activation"])
    within = [k for k in map(friendly, keys) if axes and k not in (*axes[0], *axes[1])]
    summary = summarize(runs, metric, keys, ci, within)
    new_runs = missing_runs = None
    table = summary
    if baseline is not None:
        table, new_runs, missing_runs = compare(runs, baseline, metric, keys, ci, within)
    if axes:
        check_pivot(summary, *axes)
    return Report(metric, runs, summary, order(table, sort, top), axes, pivot is not None, new_runs, missing_runs)


# ---------------------------------------------------------------------- --where


