"""``initsweep report``/``export``/``show`` on real sweeps in a real store: aggregates against an
independent pandas groupby, edge cases (all diverged, one seed, NaN metrics, unfinished runs,
empty store), every format read back, the export -> baseline round trip, and --where safety."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import initsweep
from initsweep.cli import app
from initsweep.errors import OptionError
from initsweep.config import expand, validate
from initsweep.report.diagnostics import FACTOR_COLUMNS
from initsweep.report.stats import build_report, compare, summarize
from initsweep.results.query import where_mask
from initsweep.results.read import load_results, read_runs
from initsweep.results.store import Store
from initsweep.sweep.run import run_sweep

runner = CliRunner()
TINY = {"dataset": "mnist-sample", "train_limit": 256, "test_limit": 256, "val_fraction": 0.1}
MODEL = {"arch": "plain", "width": 4, "head": "flatten"}


def write_config(path: Path, name: str, model: dict, train: dict, grid: dict | None = None) -> Path:
    cfg = {"name": name, "data": TINY, "model": {**MODEL, **model},
           "train": {"epochs": 1, "batch_size": 64, **train}, **({"grid": grid} if grid else {})}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Three sweeps in one store: a 2x2x2 grid with 2 seeds; a setting where every seed diverges
    (N(0, 1) + ReLU, depth 10, SGD lr 100: the loss becomes NaN, so test_loss is NULL); one seed
    of He + ReLU at depth 3, plus an interrupted attempt at its second seed."""
    root = tmp_path_factory.mktemp("report")
    res = root / "res"
    grid = write_config(root / "grid.yaml", "grid", {}, {"seeds": [0, 1]},
                        {"init": ["he", "std_normal"], "activation": ["relu", "tanh"], "depth": [2, 4]})
    edge = write_config(root / "edge.yaml", "edge", {"depth": 10, "init": "std_normal", "activation": "relu"},
                        {"optimizer": "sgd", "lr": 100.0, "seeds": [0, 1]})
    one = write_config(root / "one.yaml", "one", {"depth": 3, "init": "he", "activation": "relu"}, {"seeds": [0]})
    for config in (grid, edge, one):
        run_sweep(config, results_dir=res, device="cpu")
    spec = expand(validate({**yaml.safe_load(one.read_text()), "train": {"epochs": 1, "batch_size": 64,
                                                                         "seeds": [1]}})).runs[0]
    with Store(res) as s:
        s.mark_interrupted(s.claim(spec), "stopped by the test")
    return res


def invoke(*args: str):
    return runner.invoke(app, [*args], env={"NO_COLOR": "1", "COLUMNS": "200"})


def report_json(res: Path, *args: str) -> pd.DataFrame:
    result = invoke("report", "--results", str(res), "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return pd.read_json(StringIO(result.stdout), precise_float=True)


# ---------------------------------------------------------------------- aggregates


def test_aggregates_equal_an_independent_groupby(store):
    df = initsweep.load_results(store, sweep="grid")
    assert len(df) == 16
    for metric in ("test_acc", "test_loss", "best_val_acc"):
        ours = summarize(df, metric, ["init", "activation", "depth"]).set_index(["init", "activation", "depth"])
        theirs = df.groupby(["init_label", "activation_label", "depth"])[metric].agg(
            ["count", "mean", "std", "min", "max"])
        theirs.index.names = ["init", "activation", "depth"]
        assert sorted(ours.index) == sorted(theirs.index) and len(ours) == 8
        for col in ("mean", "std", "min", "max"):
            pd.testing.assert_series_equal(ours[col].sort_index(), theirs[col].sort_index(), check_names=False,
                                           rtol=1e-12)
        assert (ours["n"] == theirs["count"].reindex(ours.index)).all() and (ours["n"] == 2).all()
    # the CLI's json is the same table, in the sweep's order: He before N(0, 1), depth ascending
    cli = report_json(store, "--sweep", "grid", "--by", "init,activation,depth")
    assert cli[["init", "activation", "depth"]].values.tolist()[:3] == [["he", "relu", 2], ["he", "relu", 4],
                                                                       ["he", "tanh", 2]]
    assert (cli["metric"] == "test_acc").all()
    expected = summarize(df, "test_acc", ["init", "activation", "depth"])
    assert cli["mean"].tolist() == expected["mean"].tolist()


def test_default_grouping_is_every_varying_setting_but_the_seed(store):
    df = initsweep.load_results(store)
    table = summarize(df)
    assert table.attrs["keys"][:3] == ["init", "activation", "depth"]
    assert {"optimizer", "lr"} <= set(table.attrs["keys"]) and "seed" not in table.attrs["keys"]
    assert table["runs"].sum() == len(df) == 16 + 2 + 2


def test_grouping_by_the_verdict(store):
    """The verdict can be the grouping key (it is otherwise a per-group column)."""
    df = initsweep.load_results(store)
    table = summarize(df, "test_acc", ["verdict"])
    # failed runs were never probed: they form their own group with no verdict and no metric
    expected = df.fillna({"verdict": "-"}).groupby("verdict").test_acc.count()
    assert dict(zip(table.verdict.fillna("-"), table.n)) == expected.to_dict()
    assert set(expected.index) > {"-"}
    assert list(table.columns).count("verdict") == 1
    assert invoke("report", "--results", str(store), "--by", "verdict").exit_code == 0


def test_all_diverged_group_and_nan_metric(store):
    edge = initsweep.load_results(store, sweep="edge")
    assert (edge["status"] == "diverged").all() and edge["test_loss"].isna().all()
    acc = summarize(edge, "test_acc").iloc[0]
    assert acc["diverged"] == 2 and acc["diverged_rate"] == 1.0 and acc["n"] == 2
    assert acc["mean"] == pytest.approx(edge["test_acc"].mean())
    loss = summarize(edge, "test_loss").iloc[0]
    assert loss["n"] == 0 and pd.isna(loss["mean"]) and pd.isna(loss["std"]) and loss["diverged_rate"] == 1.0
    out = invoke("report", "--results", str(store), "--sweep", "edge", "--metric", "test_loss", "--by", "init")
    assert out.exit_code == 0 and "2/2" in out.stdout and "—" in out.stdout


def test_one_seed_shows_no_std_and_unfinished_runs_are_left_out(store):
    one = initsweep.load_results(store, sweep="one")
    assert sorted(one["status"]) == ["interrupted", "ok"]
    row = summarize(one, "test_acc").iloc[0]
    assert row["n"] == 1 and pd.isna(row["std"]) and row["unfinished"] == 1 and row["runs"] == 2
    assert row["mean"] == one.loc[one["status"] == "ok", "test_acc"].iloc[0]
    out = invoke("report", "--results", str(store), "--sweep", "one", "--by", "depth")
    assert out.exit_code == 0
    line = next(line for line in out.stdout.splitlines() if line.strip().startswith("│ 3"))
    assert "±" not in line and f"{row['mean']:.4f}" in line and "unfinished" in out.stdout


def test_a_run_in_two_sweeps_counts_once(store):
    df = initsweep.load_results(store, sweep="grid")
    twice = pd.concat([df, df.assign(sweep="copy", row_id=df["row_id"] + 1000)], ignore_index=True)
    assert summarize(twice)["n"].tolist() == summarize(df)["n"].tolist()


def test_empty_store_missing_folder_and_fresh_results_dir(tmp_path):
    Store(tmp_path / "empty").close()
    assert summarize(load_results(tmp_path / "empty")).empty
    out = invoke("report", "--results", str(tmp_path / "empty"))
    assert out.exit_code == 0 and "no runs in" in out.stdout and "initsweep run" in out.stdout
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".gitkeep").write_text("")
    out = invoke("report", "--results", str(fresh))
    assert out.exit_code == 0 and "no runs in" in out.stdout
    (tmp_path / "notes.txt").write_text("not results")
    for path, why in ((tmp_path / "nope", "does not exist"), (tmp_path / "notes.txt", "not a results folder")):
        out = invoke("report", "--results", str(path))
        assert out.exit_code == 2 and len(out.stderr.strip().splitlines()) == 1, out.output
        assert why in out.stderr
    machine = invoke("report", "--results", str(tmp_path / "empty"), "--format", "json")
    assert machine.exit_code == 0 and machine.stdout == "" and "no runs" in machine.stderr


# ---------------------------------------------------------------------- views


def expected_marks(runs: pd.DataFrame, within: list[str], metric: str = "test_acc") -> dict[tuple, str]:
    """The best-cell marks recomputed here, by scipy, per table: ★ for a best cell better than
    every other at 5% (paired by seed), else ≈ on the best and each cell it does not beat."""
    from scipy.stats import ttest_rel

    keys = ["init_label", "activation_label", "depth"]
    marks = {}
    for _, table in runs.groupby(within):
        by_seed = {k: g.set_index("seed")[metric] for k, g in table.groupby(keys)}
        best = max(by_seed, key=lambda k: by_seed[k].mean())
        tied = [k for k in by_seed if k != best and not ttest_rel(by_seed[best], by_seed[k].loc[by_seed[best].index]
                                                                  ).pvalue < 0.05]
        marks.update({k: "" for k in by_seed})
        marks.update({k: "≈" for k in [best, *tied]} if tied else {best: "★"})
    return marks


def test_pivot_is_the_default_for_a_grid_and_marks_the_best_per_depth(store, tmp_path):
    """The marks are scipy's paired tests per depth: on the stored runs, then on their export
    with accuracies set so that depth 2 has a clear winner and depth 4 a near tie."""
    runs = initsweep.load_results(store, sweep="grid")
    acc = {("he", "relu", 2): [0.90, 0.91], ("he", "tanh", 2): [0.50, 0.52], ("std_normal", "relu", 2): [0.40, 0.43],
           ("std_normal", "tanh", 2): [0.30, 0.32], ("he", "relu", 4): [0.90, 0.80], ("he", "tanh", 4): [0.79, 0.90],
           ("std_normal", "relu", 4): [0.40, 0.31], ("std_normal", "tanh", 4): [0.60, 0.35]}
    made = runs.assign(test_acc=[acc[(r.init_label, r.activation_label, r.depth)][r.seed] for r in runs.itertuples()])
    assert made.groupby(["init_label", "activation_label", "depth"])["seed"].agg(lambda s: sorted(s) == [0, 1]).all()
    export = tmp_path / "made.csv"
    made.to_csv(export, index=False)
    for results, frame in ((store, runs), (export, made)):
        out = invoke("report", "--results", str(results), "--sweep", "grid")
        assert out.exit_code == 0, out.output
        assert "depth = 2" in out.stdout and "depth = 4" in out.stdout
        table = build_report(frame).summary
        marks = expected_marks(frame, ["depth"])
        assert table["mark"].tolist() == [marks[(r.init, r.activation, r.depth)] for r in table.itertuples()]
        for r in table.itertuples():
            section = out.stdout.split(f"depth = {r.depth}")[1].split("depth = ")[0]
            line = next(line for line in section.splitlines() if line.startswith(f"│ {r.init} "))
            column = 2 if r.activation == "relu" else 3
            assert line.split("│")[column].strip() == f"{r.mean:.4f}±{r.ci_high - r.mean:.4f}{r.mark}"
        tied = "≈: not distinguishable from the best at 5%, paired by seed" in " ".join(out.stdout.split())
        assert tied == ("≈" in marks.values())
    # the made-up table: depth 2's winner beats every cell; at depth 4 three cells are within noise of the best,
    # one of them 0.375 lower on average but too noisy over 2 seeds to tell
    assert [marks[k] for k in sorted(marks)] == ["★", "≈", "", "≈", "", "", "", "≈"], sorted(marks.items())
    assert out.stdout.count("★") == 1 + 1  # the cell, and the legend that explains it


def test_pivot_exports_a_wide_table(store):
    wide = pd.read_csv(StringIO(invoke("report", "--results", str(store), "--sweep", "grid", "--pivot",
                                       "init:activation", "--format", "csv").stdout))
    assert list(wide.columns) == ["metric", "depth", "init", "relu", "tanh", "relu ci_low", "tanh ci_low",
                                  "relu ci_high", "tanh ci_high", "relu mark", "tanh mark"] and len(wide) == 4
    table = build_report(initsweep.load_results(store, sweep="grid"), pivot="init:activation").summary
    table = table.set_index(["init", "activation", "depth"])
    cells = wide.set_index(["init", "depth"])
    for init, activation, depth in table.index:
        for value, column in (("mean", activation), ("ci_low", f"{activation} ci_low"),
                              ("ci_high", f"{activation} ci_high")):
            assert cells.loc[(init, depth), column] == table.loc[(init, activation, depth), value]
        mark = cells.loc[(init, depth), f"{activation} mark"]  # csv: an empty mark reads back as NaN
        assert ("" if pd.isna(mark) else mark) == table.loc[(init, activation, depth), "mark"]


def test_where_sort_and_top(store):
    df = initsweep.load_results(store)
    picked = report_json(store, "--where", 'depth >= 4 and activation == "relu"', "--by", "init,depth,sweep")
    assert picked["runs"].sum() == ((df["depth"] >= 4) & (df["activation"] == "relu")).sum() == 4 + 2
    top = report_json(store, "--sweep", "grid", "--top", "3")
    best = summarize(initsweep.load_results(store, sweep="grid")).nlargest(3, "mean")
    assert top["mean"].tolist() == best["mean"].tolist()
    by_n = report_json(store, "--sort", "-n", "--by", "sweep")
    assert by_n["n"].tolist() == sorted(by_n["n"], reverse=True)
    assert load_results(store, where="seed == 1 and sweep in ['grid', 'one']")["seed"].eq(1).sum() == 9


@pytest.mark.parametrize("expr,message", [
    ("dpeth >= 8", "--where: unknown column 'dpeth' — did you mean 'depth'?"),
    ("depth >=", "--where: not a valid expression"),
    ("depth = 8", "use == to compare"),
    ("__import__('os').system('touch pwned')", "--where: expected a comparison"),
    ("depth.__class__ == 1", "--where: expected a column name"),
    ("depth == len('ab')", "only column names, numbers, strings"),
    ("depth + 1 > 2", "--where: expected a column name"),
    ('depth == "8"', "'depth' holds numbers"),
    ("init == 3", "'init' holds text"),
    ("depth", "expected a comparison"),
])
def test_bad_where_exits_2_with_one_line(store, tmp_path, monkeypatch, expr, message):
    monkeypatch.chdir(tmp_path)
    out = invoke("report", "--results", str(store), "--where", expr)
    assert out.exit_code == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "pwned").exists()


def test_where_matches_pandas_on_every_shape(store):
    df = initsweep.load_results(store)
    cases = {
        "2 < depth <= 4": (df["depth"] > 2) & (df["depth"] <= 4),
        "not (depth > 2) or seed == 1": ~(df["depth"] > 2) | (df["seed"] == 1),
        "(init in ['he']) & (status != 'ok')": df["init"].isin(["he"]) & (df["status"] != "ok"),
        "activation not in ('tanh',)": ~df["activation"].isin(["tanh"]),
        "test_loss == None": df["test_loss"].isna(),
        "lr > -1e-9 and 0.5 > test_acc": (df["lr"] > -1e-9) & (df["test_acc"] < 0.5),
    }
    for expr, expected in cases.items():
        assert where_mask(df, expr).tolist() == expected.tolist(), expr


def test_unknown_metric_by_sort_and_pivot_exit_2(store):
    for args, message in ((["--metric", "test_accc"],
                           "--metric: unknown column 'test_accc' — did you mean 'test_acc'?"),
                          (["--metric", "init"], "not numeric"),
                          (["--by", "init,dpeth"], "--by: unknown column 'dpeth'"),
                          (["--sort", "maen"], "--sort: unknown column 'maen'"),
                          (["--pivot", "init"], "--pivot: expected ROWS:COLS"),
                          (["--pivot", "init:activation", "--top", "3", "-f", "csv"],
                           "--pivot shows every cell; --sort and --top order the flat table")):
        out = invoke("report", "--results", str(store), *args)
        assert out.exit_code == 2 and len(out.stderr.strip().splitlines()) == 1, (args, out.output)
        assert message in out.stderr, out.stderr


# ---------------------------------------------------------------------- formats


class _Tables(HTMLParser):
    """The text of every <td>/<th> in an HTML page, and the sources of its images."""

    def __init__(self):
        super().__init__()
        self.cells, self.images, self.tables, self._cell = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "th"):
            self._cell = ""
        elif tag == "table":
            self.tables += 1
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.cells.append(self._cell)
            self._cell = None


def test_every_format_parses_back(store, tmp_path):
    expected = summarize(initsweep.load_results(store, sweep="grid"))
    csv = pd.read_csv(StringIO(invoke("report", "-r", str(store), "--sweep", "grid", "-f", "csv").stdout))
    assert csv["mean"].tolist() == expected["mean"].tolist() and len(csv) == 8
    js = report_json(store, "--sweep", "grid")
    assert js["std"].tolist() == expected["std"].tolist()
    md = invoke("report", "-r", str(store), "--sweep", "grid", "-f", "markdown").stdout
    assert ("| init | activation | depth | test_acc (mean ± 95% CI) | ci_low | ci_high | std | n | min | max "
            "| diverged |") in md
    assert "|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|" in md
    out = invoke("report", "-r", str(store), "--sweep", "grid", "-o", str(tmp_path / "r.html"))
    assert out.exit_code == 0, out.output
    page = _Tables()
    page.feed((tmp_path / "r.html").read_text())
    assert page.tables == 3  # a pivot per depth, then every group
    first = expected.iloc[0]
    shown = f"{first['mean']:.4f} ± {first['ci_high'] - first['mean']:.4f}{first['mark']}"
    assert shown in page.cells and "test_acc (mean ± 95% CI)" in page.cells
    assert f"{first['ci_low']:.4f}" in page.cells and f"{first['std']:.4f}" in page.cells
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    text = invoke("report", "-r", str(store), "--sweep", "grid", "-o", str(tmp_path / "r.txt"))
    assert text.exit_code == 0 and "depth = 2" in (tmp_path / "r.txt").read_text() and text.stdout == ""


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_then_baseline_shows_zero_deltas(store, tmp_path, fmt):
    path = tmp_path / f"runs.{fmt}"
    out = invoke("export", "--results", str(store), "--format", fmt, "--output", str(path))
    assert out.exit_code == 0, out.output
    pd.testing.assert_frame_equal(load_results(path), load_results(store))
    delta = report_json(store, "--baseline", str(path))
    assert len(delta) == len(summarize(load_results(store)))
    assert (delta["change"] == "same").all() and (delta["delta"].fillna(0) == 0).all()
    assert delta["delta"].notna().sum() == len(delta)
    table = invoke("report", "--results", str(store), "--baseline", str(path))
    assert "vs baseline:" in table.stdout and "same" in table.stdout
    from_export, from_store = (pd.read_csv(StringIO(invoke("report", "--results", str(source), "--sweep", "grid",
                                                           "-f", "csv").stdout), dtype=str) for source in (path, store))
    # the store's layers judge each group over its seeds (report/diagnostics.py: its verdict and factors); an
    # export has no layers and keeps the runs' consensus verdict: every other column is the same
    assert set(FACTOR_COLUMNS) <= set(from_store) and not set(FACTOR_COLUMNS) & set(from_export)
    pd.testing.assert_frame_equal(from_export.drop(columns="verdict"), from_store.drop(columns=["verdict", *FACTOR_COLUMNS]))
    assert from_export["verdict"].notna().all() and from_store["verdict"].notna().all()


def test_baseline_lists_new_and_missing_runs(store, tmp_path):
    grid_only = tmp_path / "grid.csv"
    assert invoke("export", "-r", str(store), "--sweep", "grid", "-o", str(grid_only)).exit_code == 0
    current, base = load_results(store), load_results(grid_only)
    table, new, missing = compare(current, base)
    assert set(new["sweep"]) == {"edge", "one"} and len(new) == 4 and missing.empty
    assert set(table.loc[table["change"] == "new", "depth"]) == {3, 10}
    assert (table.loc[table["change"] != "new", "delta"] == 0).all()
    _, new, missing = compare(base, current)
    assert new.empty and len(missing) == 4
    out = invoke("report", "-r", str(store), "--baseline", str(grid_only))
    assert "new runs (not in the baseline)" in out.stdout and "2 new" in out.stdout
    # a worse result is marked worse, in the metric's direction
    worse = base.assign(test_acc=base["test_acc"] - 0.01, test_loss=base["test_loss"] + 1)
    for metric in ("test_acc", "test_loss"):
        assert set(build_report(worse, metric, baseline=base).table["change"]) == {"worse"}, metric
        assert set(build_report(base, metric, baseline=worse).table["change"]) == {"better"}, metric


def test_export_stdout_history_and_bad_files(store, tmp_path):
    text = invoke("export", "-r", str(store), "--history").stdout
    assert len(pd.read_csv(StringIO(text))) == len(load_results(store, history=True)) == 20
    js = json.loads(invoke("export", "-r", str(store), "-f", "json", "--where", "sweep == 'edge'").stdout)
    assert len(js) == 2 and js[0]["test_loss"] is None and js[0]["status"] == "diverged"
    out = invoke("export", "-r", str(store), "-f", "parquet")
    assert out.exit_code == 2 and "--output" in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = invoke("report", "-r", str(store), "--baseline", str(bad))
    assert out.exit_code == 2 and "cannot read it as json" in out.stderr
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    out = invoke("report", "-r", str(other))
    assert out.exit_code == 2 and "not a run export" in out.stderr


def test_load_results_and_summarize_are_public(store):
    df = initsweep.load_results(store, sweep="grid")
    assert hasattr(initsweep, "summarize") and "summarize" in initsweep.__all__
    assert len(load_results(store, sweep="grid", where="depth == 2")) == len(df[df.depth == 2]) == 8
    assert read_runs(store, "grid")["run_id"].tolist() == df["run_id"].tolist()


# ---------------------------------------------------------------------- show


def test_show_a_run_by_prefix(store):
    df = load_results(store, sweep="grid")
    run = df.iloc[0]
    prefix = next(run["run_id"][:n] for n in range(1, 17)
                  if (load_results(store)["run_id"].str.startswith(run["run_id"][:n])).sum() == 1)
    out = invoke("show", prefix, "--results", str(store))
    assert out.exit_code == 0, out.output
    assert run["run_id"] in out.stdout and "model.init" in out.stdout and "per epoch" in out.stdout
    assert f"{run['test_acc']:.4f}" in out.stdout and "torch_version" in out.stdout
    detail = json.loads(invoke("show", run["run_id"], "-r", str(store), "-f", "json").stdout)
    assert detail["run"]["run_id"] == run["run_id"] and len(detail["epochs"]) == 1
    assert detail["settings"]["model"]["depth"] == run["depth"]
    interrupted = load_results(store, sweep="one").query("status == 'interrupted'").iloc[0]
    out = invoke("show", interrupted["run_id"], "-r", str(store))
    assert "stopped by the test" in out.stdout and "no epochs recorded" in out.stdout
    shared = next(c for c in "0123456789abcdef" if load_results(store)["run_id"].str.startswith(c).sum() > 1)
    for arg, message in ((shared, "matches"), ("zz", "no run id starts with 'zz'")):
        out = invoke("show", arg, "-r", str(store))
        assert out.exit_code == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------- what a report states

ONE_SEED_LOST = 'not (init == "he" and activation == "tanh" and depth == 2 and seed == 1)'


def test_a_cell_with_a_missing_seed_shows_its_n_in_every_format(store):
    """The grid has 2 seeds per cell; with one run filtered out, that cell (only) says n=1."""
    kept = summarize(initsweep.load_results(store, sweep="grid", where=ONE_SEED_LOST))
    assert kept["n"].tolist().count(1) == 1 and kept["n"].tolist().count(2) == 7
    marks = build_report(initsweep.load_results(store, sweep="grid", where=ONE_SEED_LOST)).summary
    cell = marks.set_index(["init", "activation", "depth"]).loc[("he", "tanh", 2)]
    assert cell["mark"] == "≈"  # a single seed pairs with nothing: never distinguishable from the best, never ★
    shown = f"{cell['mean']:.4f}¹≈ (n=1)"  # one seed: the mean alone, its ¹ (no interval), its mark, its n
    args = ("report", "-r", str(store), "--sweep", "grid", "--where", ONE_SEED_LOST)
    table = invoke(*args).stdout
    he = [line for line in table.split("depth = 4")[0].splitlines() if line.startswith("│ he ")]
    assert [line.split("│")[3].strip() for line in he] == [shown]
    assert len(re.findall(r"\(n=\d", table)) == 1
    assert "n = 2 per cell, other n marked (n=k)" in " ".join(table.split())  # the legend, maybe wrapped
    assert "¹ n = 1: no interval · mean ± half-width of its 95% CI over seeds" in " ".join(table.split())
    md = invoke(*args, "-f", "markdown").stdout
    assert len(re.findall(r"\(n=\d", md)) == 1
    assert "| he | " in md and f" | {shown}" in md.split("**depth = 4**")[0]
    assert "n = 2 per cell, other n marked (n=k)_" in md
    assert "¹ n = 1: no interval" in md.split("n = 2 per cell")[0].splitlines()[-1]  # the pivot's legend
    page = _Tables()
    page.feed(invoke(*args, "-f", "html").stdout)
    marked = [c for c in page.cells if re.search(r"\(n=\d", c)]
    assert len(marked) == 1 and marked[0].startswith(shown)  # then the verdict, on its own line
    # every cell with the same n: no cell is marked, and the legend says n once
    full = invoke("report", "-r", str(store), "--sweep", "grid", "-f", "markdown").stdout
    assert not re.search(r"\(n=\d", full) and "; n = 2 per cell_" in full


def test_markdown_and_html_say_which_runs_they_cover(store, tmp_path):
    where = 'depth >= 4 and activation == "relu"'
    md = invoke("report", "-r", str(store), "--sweep", "grid", "--sweep", "edge", "--where", where,
                "-f", "markdown").stdout
    top = md.split("###")[0].splitlines()  # before the first table
    assert f"Runs: `--sweep grid` · `--sweep edge` · `--where {where}`" in top
    assert "Runs: every run in the results (no --sweep, no --where)" in invoke(
        "report", "-r", str(store), "-f", "markdown").stdout.split("###")[0]
    out = invoke("report", "-r", str(store), "--where", where, "-o", str(tmp_path / "r.html"))
    assert out.exit_code == 0, out.output
    page = (tmp_path / "r.html").read_text()
    assert page.index("<p>Runs: <code>--where depth &gt;= 4 and activation == &quot;relu&quot;</code></p>") \
        < page.index("<table>")
    base = tmp_path / "base.csv"
    assert invoke("export", "-r", str(store), "-o", str(base)).exit_code == 0
    compared = invoke("report", "-r", str(store), "--where", where, "--baseline", str(base), "-f", "markdown").stdout
    assert f"Runs: `--where {where}` (the baseline filtered by the same --where)" in compared


def test_one_markdown_table_writer_for_the_report_and_the_ci_summary():
    """report/formats.py's ``markdown_table`` writes both tables: ``|`` escaped and a line break
    as `` · `` in either (a raw one would end the row); the report aligns (numbers right), the
    CI summary formats its numbers, marks gaps with ``–`` and escapes HTML (GitHub renders it)."""
    from initsweep.report.ci import summary_table
    from initsweep.report.formats import markdown_table

    df = pd.DataFrame({"name": ["a|b", "x\ny", "<i>"], "n": [1, 2, 3], "acc": [0.5, float("nan"), 0.123456]})
    assert markdown_table(df) == ("| name | n | acc |\n|:---|---:|---:|\n| a\\|b | 1 | 0.5 |\n"
                                  "| x · y | 2 | nan |\n| <i> | 3 | 0.123456 |")
    assert markdown_table(df[["name"]], right={"name"}).splitlines()[1] == "|---:|"
    assert summary_table(df, ["name", "acc"]) == ("| name | acc |\n|---|---|\n| a\\|b | 0.5000 |\n| x · y | – |\n"
                                                  "| &lt;i&gt; | 0.1235 |\n")


# ---------------------------------------------------------------------- intervals


def test_ci_columns_are_scipys_t_interval_of_the_seed_mean(store):
    """ci_low/ci_high against ``scipy.stats.t.interval`` recomputed from the stored runs, in
    summarize and in the CLI's json; a group whose seeds agree exactly has the point as its interval."""
    from scipy import stats

    df = initsweep.load_results(store, sweep="grid")
    ours = summarize(df, "test_acc", ["init", "activation", "depth"]).set_index(["init", "activation", "depth"])
    cli = report_json(store, "--sweep", "grid", "--by", "init,activation,depth").set_index(
        ["init", "activation", "depth"])
    assert ours.attrs["ci"] == 0.95
    for key, group in df.groupby(["init_label", "activation_label", "depth"]):
        values = group["test_acc"]
        sem = stats.sem(values)
        low, high = (values.mean(),) * 2 if sem == 0 else stats.t.interval(0.95, len(values) - 1, values.mean(), sem)
        for frame in (ours, cli):
            assert frame.loc[key, "ci_low"] == pytest.approx(low, rel=1e-12, abs=1e-15)
            assert frame.loc[key, "ci_high"] == pytest.approx(high, rel=1e-12, abs=1e-15)


def test_ci_level_narrows_the_interval_by_the_t_ratio(store):
    from scipy import stats

    wide = report_json(store, "--sweep", "grid")
    narrow = report_json(store, "--sweep", "grid", "--ci", "0.9")
    assert narrow["mean"].tolist() == wide["mean"].tolist() and (wide["n"] == 2).all() and (wide["std"] > 0).any()
    ratio = stats.t.ppf(0.95, 1) / stats.t.ppf(0.975, 1)
    spread = wide["std"] > 0
    for side in ("ci_high", "ci_low"):
        half = (narrow[side] - narrow["mean"])[spread] / (wide[side] - wide["mean"])[spread]
        assert half.tolist() == pytest.approx([ratio] * spread.sum(), rel=1e-9)
    table = invoke("report", "-r", str(store), "--sweep", "grid", "--by", "init,activation,depth", "--ci", "0.9")
    # (a narrower terminal may wrap the header: match its start)
    assert table.exit_code == 0 and "(mean ± 90%" in table.stdout and "95%" not in table.stdout
    pivot = invoke("report", "-r", str(store), "--sweep", "grid", "--ci", "0.9", "-f", "markdown").stdout
    assert "mean ± half-width of its 90% CI over seeds" in pivot and "test_acc (mean ± 90% CI)" in pivot


@pytest.mark.parametrize("level", ["1.5", "0", "1", "-0.1", "nan"])
def test_a_ci_level_outside_0_1_exits_2_with_one_line(store, level):
    out = invoke("report", "-r", str(store), "--ci", level)
    assert out.exit_code == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --ci {float(level)}: ") and "between 0 and 1" in lines[0]
    with pytest.raises(OptionError, match=r"^ci=1\.5: the interval's level must lie strictly between 0 and 1"):
        summarize(initsweep.load_results(store), ci=1.5)


def test_one_seed_has_no_interval_and_every_view_says_why(store, tmp_path):
    one = summarize(initsweep.load_results(store, sweep="one")).iloc[0]
    assert one["n"] == 1 and pd.isna(one["ci_low"]) and pd.isna(one["ci_high"]) and one["mark"] == ""
    js = json.loads(invoke("report", "-r", str(store), "--sweep", "one", "-f", "json").stdout)
    assert js[0]["ci_low"] is None and js[0]["ci_high"] is None
    note = "¹ n = 1: no interval"
    table = invoke("report", "-r", str(store), "--sweep", "one", "--by", "depth").stdout
    line = next(line for line in table.splitlines() if line.strip().startswith("│ 3"))
    assert line.split("│")[2].strip() == f"{one['mean']:.4f}¹" and note in table.splitlines()
    assert f"_{note}_" in invoke("report", "-r", str(store), "--sweep", "one", "-f", "markdown").stdout.splitlines()
    assert invoke("report", "-r", str(store), "--sweep", "one", "-o", str(tmp_path / "r.html")).exit_code == 0
    assert f'<p class="note">{note}</p>' in (tmp_path / "r.html").read_text()
    # with two seeds everywhere there is no footnote
    assert "¹" not in invoke("report", "-r", str(store), "--sweep", "grid").stdout


def test_every_format_carries_the_interval_and_the_marks(store, tmp_path):
    expected = build_report(initsweep.load_results(store, sweep="grid")).summary
    csv = pd.read_csv(StringIO(invoke("report", "-r", str(store), "--sweep", "grid", "-f", "csv").stdout),
                      keep_default_na=False, na_values=[""])
    js = report_json(store, "--sweep", "grid")
    for frame in (csv, js):
        assert list(frame.columns)[5:10] == ["mean", "std", "ci_low", "ci_high", "min"]
        assert frame["ci_low"].tolist() == pytest.approx(expected["ci_low"].tolist(), rel=1e-12)
        assert frame["mark"].fillna("").tolist() == expected["mark"].tolist()
    md = invoke("report", "-r", str(store), "--sweep", "grid", "-f", "markdown").stdout
    html = invoke("report", "-r", str(store), "--sweep", "grid", "-f", "html").stdout
    table = invoke("report", "-r", str(store), "--sweep", "grid", "--by", "init,activation,depth").stdout
    page = _Tables()
    page.feed(html)
    for r in expected.itertuples():
        cell = f"{r.mean:.4f} ± {r.ci_high - r.mean:.4f}{r.mark}"
        row = [cell, f"{r.ci_low:.4f}", f"{r.ci_high:.4f}", f"{r.std:.4f}"]
        assert f"| {r.init} | {r.activation} | {r.depth} | {' | '.join(row)} |" in md
        assert " │ ".join(row) in " │ ".join(c.strip() for c in table.split("│")), row
        assert cell in page.cells
    assert {"ci_low", "ci_high", "std"} <= set(page.cells)
