"""Turn the runs table into answers: which setting is best, at which depth.

Pure pandas in, pandas out; the CLI renders the frames.
"""

from __future__ import annotations

import pandas as pd

from .store import _SETTING_COLUMNS

# Never grouped by: the seed is what groups average over; a choice's name and parameters are
# grouped through its label (``leaky_relu(negative_slope=0.2)``), which carries both.
_NOT_GROUPED = {"seed", "init", "init_params", "activation", "activation_params", "bias", "bias_params"}


def varying_settings(df: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    """The setting columns that take more than one value in ``df`` (the sweep's axes)."""
    cols = []
    for col in _SETTING_COLUMNS:
        if col in df and col not in _NOT_GROUPED and col not in exclude and df[col].nunique(dropna=False) > 1:
            cols.append(col)
    return cols


def best_per_depth(df: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """For each depth, the setting (all other axes) with the best mean ``metric`` over seeds.

    Runs that failed, are running or were interrupted are left out; diverged runs count
    (with the accuracy of the model where it stopped).
    """
    done = df[df["status"].isin(["ok", "diverged"])]
    if done.empty:
        return pd.DataFrame(columns=["depth", "setting", "mean", "n"])
    by = varying_settings(done, exclude=("depth",))
    keys = ["depth", *by]
    grouped = done.groupby(keys, dropna=False)[metric].agg(["mean", "count"]).reset_index()
    rows = []
    for depth, group in grouped.groupby("depth"):
        best = group.loc[group["mean"].idxmax()] if group["mean"].notna().any() else group.iloc[0]
        setting = " ".join(str(best[c]) for c in by) or "(single setting)"
        rows.append({"depth": depth, "setting": setting, "mean": best["mean"], "n": int(best["count"])})
    return pd.DataFrame(rows)
