"""The report's statistics on constructed run tables: the best-cell marks (★ only for a winner a
paired t-test by seed separates from every other cell, ≈ on the cells within noise of the best),
the Student-t half-width, and one number format for a mean and its ±. The same rules on stored
runs and through every format are tested in ``test_report.py``."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from initsweep.errors import OptionError
from initsweep.report.formats import fmt_stat, number_format
from initsweep.report.stats import half_width, summarize


def runs(cells: dict[str, list[float]], metric: str = "test_acc", seeds: list[int] | None = None,
         depth: int = 2) -> pd.DataFrame:
    """One finished run per (init, seed): ``cells`` maps an init label to its per-seed values."""
    rows = [{"run_id": f"{init}-{depth}-{seed}", "init_label": init, "depth": depth, "seed": seed, "status": "ok",
             metric: value}
            for init, values in cells.items() for seed, value in zip(seeds or range(len(values)), values)]
    return pd.DataFrame(rows)


def marks(df: pd.DataFrame, metric: str = "test_acc", **kwargs) -> dict[str, str]:
    table = summarize(df, metric, kwargs.pop("by", ["init"]), **kwargs)
    return dict(zip(table["init"], table["mark"]))


def test_a_clear_winner_gets_the_star_and_nobody_is_tied():
    df = runs({"he": [0.90, 0.91, 0.92], "xavier": [0.80, 0.815, 0.83], "normal": [0.70, 0.69, 0.71]})
    assert marks(df) == {"he": "★", "xavier": "", "normal": ""}
    assert stats.ttest_rel([0.90, 0.91, 0.92], [0.80, 0.815, 0.83]).pvalue < 0.05  # the test the star stands on


def test_a_noisy_near_tie_marks_both_and_stars_nobody():
    df = runs({"he": [0.90, 0.95, 0.88], "xavier": [0.91, 0.93, 0.87], "normal": [0.50, 0.52, 0.51]})
    assert stats.ttest_rel([0.90, 0.95, 0.88], [0.91, 0.93, 0.87]).pvalue > 0.05
    assert marks(df) == {"he": "≈", "xavier": "≈", "normal": ""}


def test_a_single_seed_gets_no_star():
    """One seed per cell: no pair, no test, so the best is not distinguishable from anything."""
    assert marks(runs({"he": [0.95], "normal": [0.40]})) == {"he": "≈", "normal": "≈"}
    # two seeds for the best but one shared with the other cell: still no test
    df = pd.concat([runs({"he": [0.95, 0.96]}), runs({"normal": [0.40, 0.41]}, seeds=[1, 7])])
    assert marks(df) == {"he": "≈", "normal": "≈"}
    assert marks(runs({"he": [0.95, 0.96]})) == {"he": ""}  # a table of one cell compares nothing


def test_runs_pair_by_seed_not_by_order():
    """Each seed moves both cells alike (the pairing removes it); shuffled rows pair the same way."""
    df = runs({"he": [0.70, 0.90, 0.80], "normal": [0.69, 0.888, 0.789]})
    assert stats.ttest_ind([0.70, 0.90, 0.80], [0.69, 0.888, 0.789]).pvalue > 0.05  # unpaired: within noise
    assert marks(df) == {"he": "★", "normal": ""}
    assert marks(df.sample(frac=1, random_state=3)) == {"he": "★", "normal": ""}


def test_lower_is_better_for_a_loss_and_each_table_is_marked_alone():
    loss = runs({"he": [0.30, 0.31, 0.32], "normal": [0.50, 0.52, 0.51]}, metric="test_loss")
    assert marks(loss, "test_loss") == {"he": "★", "normal": ""}
    two = pd.concat([runs({"he": [0.90, 0.91, 0.92], "normal": [0.50, 0.52, 0.51]}, depth=2),
                     runs({"he": [0.60, 0.70, 0.50], "normal": [0.61, 0.62, 0.63]}, depth=8)])
    table = summarize(two, "test_acc", ["init", "depth"], within=["depth"])
    assert table.set_index(["init", "depth"])["mark"].to_dict() == {
        ("he", 2): "★", ("normal", 2): "", ("he", 8): "≈", ("normal", 8): "≈"}
    whole = summarize(two, "test_acc", ["init", "depth"])  # one table: only depth 2's winner can be best
    assert whole.set_index(["init", "depth"])["mark"].to_dict()[("he", 2)] == "★"
    with pytest.raises(OptionError, match="within"):
        summarize(two, "test_acc", ["init"], within=["depth"])


def test_the_interval_is_scipys_and_needs_two_runs():
    df = runs({"he": [0.90, 0.95, 0.88, 0.91], "normal": [0.5, 0.5], "one": [0.7]})
    table = summarize(df, "test_acc", ["init"], ci=0.9).set_index("init")
    values = pd.Series([0.90, 0.95, 0.88, 0.91])
    low, high = stats.t.interval(0.9, 3, values.mean(), stats.sem(values))
    assert table.loc["he", ["ci_low", "ci_high"]].tolist() == pytest.approx([low, high], rel=1e-12)
    assert table.loc["normal", "ci_low"] == table.loc["normal", "ci_high"] == 0.5  # identical seeds: the point
    assert table.loc["one", ["ci_low", "ci_high"]].isna().all()
    assert half_width(0.1, 5, 0.95) == pytest.approx(stats.t.ppf(0.975, 4) * 0.1 / 5 ** 0.5, rel=1e-12)
    assert pd.isna(half_width(0.1, 1)) and pd.isna(half_width(float("nan"), 0))


def test_a_mean_and_its_half_width_share_one_format():
    """The issue's ``0.8665±0.000707``: now one format for both numbers of a cell and its column."""
    number = number_format([0.8665, 0.9], [0.0007071, 0.01])
    assert fmt_stat(0.8665, 0.0007071, 2, number=number) == "0.8665 ± 0.0007"
    assert fmt_stat(0.9690, 0.0, 2, number=number) == "0.9690 ± 0.0000"  # the point: honest, same decimals
    assert fmt_stat(0.9690, float("nan"), 1, number=number) == "0.9690¹"  # one run: no interval
    tiny = number_format([0.5], [0.00002])  # a non-zero spread never reads as 0
    assert fmt_stat(0.5, 0.00002, 3, number=tiny) == "0.50000 ± 0.00002"
    big = number_format([2.5, 1.5e5], [0.1])  # a loss that exploded: every value scientific
    assert fmt_stat(2.5, 0.1, 2, number=big) == "2.50e+00 ± 1.00e-01"
