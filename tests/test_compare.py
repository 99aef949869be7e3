"""``initsweep compare`` through the CLI on a real stored sweep (``test_predictions.make_store``).

Every number ``compare -f json`` prints is recomputed here with scipy from what the store
holds (``load_results`` and the predictions BLOBs read with plain sqlite3), by routes of
the test's own: pairs from a pandas merge on the seed, intervals from the t quantile,
Holm by hand; the numbers agree to 1e-12 relative, never compared bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_ci import invoke
from test_predictions import SEEDS, make_store, schema_2_copy, stored_predictions

from initsweep import load_results

HE, XAVIER = 'init == "he"', 'init == "xavier_uniform"'


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The sweep of ``test_predictions.make_store``: two inits x two depths x six seeds."""
    return make_store(tmp_path_factory.mktemp("compare"))


def compare_json(results: Path, *args: str) -> dict:
    result = invoke("compare", *args, "--results", str(results), "-f", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)

def close(value, expected) -> bool:
    """One number against its recomputation: both missing (NaN is null in JSON), or equal to
    1e-12 relative (the same data through other arithmetic, never bit for bit)."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return value is None
    return value == pytest.approx(expected, rel=1e-12, abs=1e-15)

def holm(ps: list[float]) -> list[float]:
    order = np.argsort(ps)
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def expected_group(runs: pd.DataFrame, predictions: dict, depth: int) -> dict:
    a = runs[(runs["init"] == "he") & (runs["depth"] == depth)]
    b = runs[(runs["init"] == "xavier_uniform") & (runs["depth"] == depth)]
    pairs = a.merge(b, on="seed", suffixes=("_a", "_b"))
    x, y = pairs["test_acc_a"].to_numpy(), pairs["test_acc_b"].to_numpy()
    d = x - y
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    only_a = only_b = 0
    for run_a, run_b in zip(pairs["run_id_a"], pairs["run_id_b"]):
        (pa, target), (pb, _) = predictions[run_a], predictions[run_b]
        only_a += int(((pa == target) & (pb != target)).sum())
        only_b += int(((pb == target) & (pa != target)).sum())
    return {"n_pairs": len(pairs), "mean_a": x.mean(), "mean_b": y.mean(), "mean_diff": d.mean(),
            "ci_low": d.mean() - half, "ci_high": d.mean() + half, "p_value": stats.ttest_rel(x, y).pvalue,
            "wilcoxon_p": stats.wilcoxon(x, y).pvalue if np.count_nonzero(d) >= 6 else None,
            "mcnemar_p": stats.binomtest(only_a, only_a + only_b).pvalue, "a_only_correct": only_a,
            "b_only_correct": only_b}


def test_compare_json_matches_scipy_on_the_stored_runs_and_predictions(store):
    out = compare_json(store, HE, XAVIER)
    runs, predictions = load_results(store), stored_predictions(store)
    assert out["differ"] == {"init": {"a": ["he"], "b": ["xavier_uniform"]}} and out["group_by"] == ["depth"]
    assert out["holm"] is True and out["difference"] == "a - b" and out["level"] == 0.95
    assert [g["group"] for g in out["groups"]] == [{"depth": 1}, {"depth": 2}]
    for group in out["groups"]:
        expected = expected_group(runs, predictions, group["group"]["depth"])
        assert group["test"] == "paired" and group["n_a"] == group["n_b"] == group["n_pairs"] == 6
        assert [p["seed"] for p in group["pairs"]] == SEEDS
        for key, value in expected.items():
            assert close(group[key], value), (key, group[key], value)
    for column in ("p_value", "wilcoxon_p", "mcnemar_p"):
        raw = [g[column] for g in out["groups"]]
        if None in raw:
            assert [g[f"{column}_holm"] for g in out["groups"]] == [None if p is None else p for p in raw]
            continue
        for group, adjusted in zip(out["groups"], holm(raw)):
            assert close(group[f"{column}_holm"], adjusted)


def test_compare_table_says_how_it_paired_and_corrected(store):
    result = invoke("compare", HE, XAVIER, "--results", str(store))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"A: {HE} (12 runs)", f"B: {XAVIER} (12 runs)", "they differ in init: he vs xavier_uniform"]
    assert "Holm correction over the 2 groups: the p columns are adjusted (raw values in --format json)" in lines
    assert sum(line.startswith(("│ depth=1 ", "│ depth=2 ")) for line in lines) == 2


def test_with_one_group_there_is_no_holm_and_few_pairs_give_no_wilcoxon(store):
    out = compare_json(store, f"{HE} and depth == 1 and seed < 3", f"{XAVIER} and depth == 1 and seed < 3")
    (group,) = out["groups"]
    assert out["holm"] is False and out["group_by"] == [] and "p_value_holm" not in group
    assert group["n_pairs"] == 3 and group["wilcoxon_p"] is None
    assert "wilcoxon needs 6 non-zero differences, has " in group["why"]
    expected = expected_group(load_results(store, where="seed < 3"), stored_predictions(store), 1)
    for key in ("mean_diff", "ci_low", "ci_high", "p_value", "mcnemar_p"):
        assert close(group[key], expected[key]), key


def test_runs_without_a_pair_are_left_out_and_counted(store):
    out = compare_json(store, f"{HE} and depth == 1", f"{XAVIER} and depth == 1 and seed < 4")
    (group,) = out["groups"]
    assert (group["n_a"], group["n_b"], group["n_pairs"]) == (6, 4, 4)
    assert "2 run(s) without a pair left out" in group["why"]
    expected = expected_group(load_results(store, where="seed < 4"), stored_predictions(store), 1)
    for key in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_value", "mcnemar_p"):
        assert close(group[key], expected[key]), key


def test_without_seed_pairs_compare_falls_back_to_welch_and_says_so(store):
    out = compare_json(store, f"{HE} and seed < 3", f"{XAVIER} and seed >= 3")
    runs = load_results(store)
    for group in out["groups"]:
        depth = group["group"]["depth"]
        x = runs[(runs.init == "he") & (runs.depth == depth) & (runs.seed < 3)]["test_acc"].to_numpy()
        y = runs[(runs.init == "xavier_uniform") & (runs.depth == depth) & (runs.seed >= 3)]["test_acc"].to_numpy()
        va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))  # Welch-Satterthwaite
        half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
        diff = x.mean() - y.mean()
        assert group["test"] == "welch" and group["n_pairs"] == 0 and group["pairs"] == []
        assert group["why"] == "no seed pairs: Welch's test"
        assert group["mcnemar_p"] is None and group["wilcoxon_p"] is None
        assert close(group["mean_diff"], diff) and close(group["ci_low"], diff - half)
        assert close(group["ci_high"], diff + half)
        assert close(group["p_value"], stats.ttest_ind(x, y, equal_var=False).pvalue)
    table = invoke("compare", f"{HE} and seed < 3", f"{XAVIER} and seed >= 3", "--results", str(store))
    assert "groups with no seed pairs fall back to Welch's test of the two sets" in table.stdout


@pytest.mark.parametrize(("args", "line"), [
    ((HE, 'init = "x"'), "error: EXPR_B: not a valid expression (invalid syntax; use == to compare): init = \"x\""),
    (('dpeth == 1', XAVIER), "error: EXPR_A: unknown column 'dpeth' — did you mean 'depth'?"),
    ((HE, "depth + 1"), "error: EXPR_B: expected a comparison such as depth >= 8, got 'depth + 1'"),
    (('init == "hee"', XAVIER), "error: EXPR_A 'init == \"hee\"': selects none of the 24 finished runs"),
    ((HE, "depth == 1"), None),  # overlapping sets: checked below with the run id it names
    ((HE, XAVIER, "--metric", "tset_acc"), "error: --metric: unknown column 'tset_acc' — did you mean 'test_acc'?"),
    ((HE, XAVIER, "--metric", "init_label"), "error: --metric: column 'init_label' is not numeric"),
])
def test_bad_input_is_one_line_and_exit_2(store, args, line):
    result = invoke("compare", *args, "--results", str(store))
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    if line is None:
        assert lines[0].startswith("error: EXPR_B 'depth == 1': selects 6 run(s) the first expression selects too (")
        assert lines[0].endswith("...): the two sets must not overlap")
    else:
        assert lines == [line]


def test_compare_on_a_missing_folder_is_exit_2(tmp_path):
    result = invoke("compare", HE, XAVIER, "--results", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: does not exist"]


def test_runs_stored_before_predictions_are_compared_without_mcnemar(store, tmp_path):
    out = compare_json(schema_2_copy(store, tmp_path / "old"), HE, XAVIER)
    for group in out["groups"]:
        assert group["mcnemar_p"] is None and group["a_only_correct"] is None and group["p_value"] is not None
        assert "no mcnemar: runs without stored predictions (stored before schema 3, or read from an export)" \
            in group["why"]


def test_a_metric_without_spread_gives_empty_tests_and_says_why(store):
    """``epochs`` is 1 for every run: every paired difference is 0 (a zero-width interval, no
    t-test, no Wilcoxon) and neither set has spread (no Welch test); McNemar still compares
    the test classifications, which do differ."""
    (paired,) = compare_json(store, f"{HE} and depth == 1", f"{XAVIER} and depth == 1", "--metric", "epochs")["groups"]
    assert paired["n_pairs"] == 6 and (paired["mean_diff"], paired["ci_low"], paired["ci_high"]) == (0.0, 0.0, 0.0)
    assert paired["p_value"] is None and paired["wilcoxon_p"] is None and paired["mcnemar_p"] is not None
    assert paired["why"] == ("every pair differs by the same amount: no t-test; "
                             "wilcoxon needs 6 non-zero differences, has 0")
    (welch,) = compare_json(store, f"{HE} and depth == 1 and seed < 3", f"{XAVIER} and depth == 1 and seed >= 3",
                            "--metric", "epochs")["groups"]
    assert welch["test"] == "welch" and welch["p_value"] is None and welch["ci_low"] is None
    assert welch["why"] == "no seed pairs: Welch's test; no spread in either set: no Welch test"
