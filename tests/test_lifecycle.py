"""The run lifecycle through the real CLI: ``tag`` (shown, queried, exported, merged), ``rm``
(every attempt and every row keyed by its row_id, one transaction, refusals that change
nothing) and ``INITSWEEP_RESULTS`` (the default results folder; ``--results`` wins)."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from test_ci import invoke, runner, write_config
from test_store_faults import cli, make_read_only, snapshot

from initsweep.cli import app
from initsweep.results.read import load_results
from initsweep.results.store import process_owner

TABLES = ("runs", "epochs", "layers", "predictions", "tags", "extra")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """One real store, built once: sweep ``ci`` (2 depths x 2 inits, with diagnostics, so
    layers rows too), one of its runs run twice (``--fresh``: two attempts), and sweep
    ``other`` (one run of its own). The tests copy it."""
    root = tmp_path_factory.mktemp("lifecycle")
    res = root / "res"
    grid = write_config(root / "grid.yaml", {"depth": [1, 2], "init": ["he", "orthogonal"]},
                        diagnostics={"batch_size": 16})
    again = write_config(root / "again.yaml", {"depth": [1], "init": ["he"]}, diagnostics={"batch_size": 16})
    other = write_config(root / "other.yaml", {"depth": [3]}, name="other")
    for config, extra in ((grid, []), (again, ["--fresh"]), (other, [])):
        result = invoke("run", str(config), "-r", str(res), "--device", "cpu", "--workers", "1", "--threads", "1",
                        "-q", *extra)
        assert result.exit_code == 0, result.output
    return {"store": res, "config": other}


@pytest.fixture
def store(built, tmp_path) -> Path:
    """A copy of the built store with a table added after the fact, keyed by row_id as a
    later feature's would be (issue 14's predictions): ``rm`` must find it in the schema."""
    folder = tmp_path / "res"
    shutil.copytree(built["store"], folder)
    with sqlite3.connect(folder / "initsweep.db") as conn:
        conn.execute("CREATE TABLE extra (row_id INTEGER NOT NULL REFERENCES runs (row_id), v REAL)")
        conn.execute("INSERT INTO extra SELECT row_id, 1.0 FROM runs")
    conn.close()
    return folder


def runs(folder: Path) -> pd.DataFrame:
    return load_results(folder)


def run_id(folder: Path, **where) -> str:
    df = runs(folder)
    for key, value in where.items():
        df = df[df[key] == value]
    (rid,) = df["run_id"]
    return rid


def rows(folder: Path) -> dict[str, list[tuple]]:
    """Every row of every table, by table, in a stable order."""
    with sqlite3.connect(folder / "initsweep.db") as conn:
        out = {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    conn.close()
    return out


def of_rows(table_rows: dict[str, list[tuple]], row_ids: set[int]) -> dict[str, list[tuple]]:
    """The rows of these attempts, by table (row_id is every table's first column)."""
    return {t: [r for r in rs if r[0] in row_ids] for t, rs in table_rows.items()}


def lines(text: str) -> list[str]:
    return text.strip().splitlines()


# ---------------------------------------------------------------------------------- tag


def test_tag_add_note_remove_and_where_export_show(store):
    he1, orth2 = run_id(store, init="he", depth=1), run_id(store, init="orthogonal", depth=2)
    added = invoke("tag", he1[:6], orth2, "--add", "baseline", "--note", "paper Fig. 2", "-r", str(store))
    assert added.exit_code == 0, added.output
    assert lines(added.stdout) == ["tag 'baseline' added to 2 runs"]
    again = invoke("tag", he1, "--add", "baseline", "--add", "good", "-r", str(store))
    assert lines(again.stdout) == ["tag 'baseline' added to 0 runs (1 had it)", "tag 'good' added to 1 run"]

    exported = pd.read_csv(io.StringIO(invoke("export", "-r", str(store)).stdout))
    assert exported.columns[-1] == "tags" and len(exported) == 5
    tags = dict(zip(exported["run_id"], exported["tags"].fillna("")))  # an untagged run: an empty cell
    assert tags.pop(he1) == "baseline,good" and tags.pop(orth2) == "baseline" and set(tags.values()) == {""}
    as_json = json.loads(invoke("export", "-r", str(store), "-f", "json").stdout)
    assert sorted((r["run_id"], r["tags"]) for r in as_json if r["tags"]) == sorted(
        [(he1, "baseline,good"), (orth2, "baseline")])
    assert sorted(load_results(store, where='tags contains "baseline"')["run_id"]) == sorted([he1, orth2])
    written = store.parent / "runs.csv"
    assert invoke("export", "-r", str(store), "-o", str(written)).exit_code == 0  # read back: the same tags
    assert sorted(load_results(written, where='tags contains "baseline"')["run_id"]) == sorted([he1, orth2])

    chosen = invoke("export", "-r", str(store), "--where", 'tags contains "good" or depth == 3')
    assert len(lines(chosen.stdout)) == 1 + 2
    report = invoke("report", "-r", str(store), "-f", "json", "--where", 'tags contains "baseline"')
    assert report.exit_code == 0 and sum(g["runs"] for g in json.loads(report.stdout)) == 2
    assert invoke("report", "-r", str(store), "--where", 'tags contains "base"').stdout.startswith(
        "no runs match")  # a whole tag, not a part of one

    shown = json.loads(invoke("show", he1, "-r", str(store), "-f", "json").stdout)
    assert [(t["tag"], t["note"]) for t in shown["tags"]] == [("baseline", "paper Fig. 2"), ("good", None)]
    assert shown["run"]["tags"] == "baseline,good"
    table = invoke("show", he1, "-r", str(store)).stdout
    assert "baseline  paper Fig. 2" in table and "good" in table

    removed = invoke("tag", he1, orth2, "--remove", "good", "-r", str(store))
    assert lines(removed.stdout) == ["tag 'good' removed from 1 run (1 did not have it)"]
    by_where = invoke("tag", "--where", 'tags contains "baseline"', "--remove", "baseline", "--add", "seen",
                      "-r", str(store))
    assert by_where.exit_code == 0, by_where.output
    assert rows(store)["tags"] and {r[1] for r in rows(store)["tags"]} == {"seen"}
    assert len(rows(store)["tags"]) == 2


@pytest.mark.parametrize(("args", "line"), [
    (["GOOD", "zzz", "--add", "x"], "error: no run id starts with 'zzz' in {store}; initsweep report lists them"),
    (["GOOD", "--add", "two words"], "error: --add two words: a tag is letters, digits and _ . : / + = @ - "
                                     "(no spaces or commas)"),
    (["GOOD", "--add", "a,b"], "error: --add a,b: a tag is letters, digits and _ . : / + = @ - "
                               "(no spaces or commas)"),
    (["GOOD", "--note", "n"], "error: tag: give --add TAG or --remove TAG"),
    (["GOOD", "--remove", "x", "--note", "n"], "error: tag: --note is the note of the tags --add adds; "
                                               "give --add TAG"),
    (["--add", "x"], "error: tag: say which runs: RUN_ID..., --where EXPR"),
    (["--where", "depth == 9", "--add", "x"], "error: tag: no runs match --where 'depth == 9' in {store}; "
                                             "nothing tagged"),
])
def test_a_refused_tag_is_one_line_exit_2_and_changes_nothing(store, args, line):
    good = run_id(store, depth=3)
    before = snapshot(store)
    result = invoke("tag", *(good if a == "GOOD" else a for a in args), "-r", str(store))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert lines(result.stderr) == [line.format(store=store)]
    assert snapshot(store) == before


def test_where_contains_is_for_tags_only(store):
    result = invoke("export", "-r", str(store), "--where", 'depth contains "x"')
    assert result.exit_code == 2
    assert lines(result.stderr) == ["error: --where: contains works on tags; 'depth' is a single value (use == or in)"]


def test_merge_carries_tags_into_new_and_into_identical_runs(store, tmp_path):
    he1 = run_id(store, init="he", depth=1)
    plain = tmp_path / "plain"
    shutil.copytree(store, plain)  # the same runs, untagged
    assert invoke("tag", he1, "--add", "baseline", "--note", "n", "-r", str(store)).exit_code == 0
    fresh = invoke("merge", str(store), "--into", str(tmp_path / "merged"))
    assert fresh.exit_code == 0, fresh.output
    assert dict(zip(*load_results(tmp_path / "merged")[["run_id", "tags"]].T.values))[he1] == "baseline"
    into_same = invoke("merge", str(store), "--into", str(plain))
    assert into_same.exit_code == 0 and "0 run(s) added, 5 already there" in into_same.stdout
    assert [(t["tag"], t["note"]) for t in json.loads(invoke("show", he1, "-r", str(plain), "-f", "json").stdout)[
        "tags"]] == [("baseline", "n")]


# ----------------------------------------------------------------------------------- rm


def test_rm_by_id_deletes_every_attempt_and_every_row_keyed_by_it(store):
    he1 = run_id(store, init="he", depth=1)  # two attempts (the --fresh rerun)
    assert invoke("tag", he1, "--add", "gone", "-r", str(store)).exit_code == 0
    before = rows(store)
    gone = {r[0] for r in before["runs"] if r[1] == he1}
    assert len(gone) == 2 and all(of_rows(before, gone)[t] for t in TABLES)  # it has rows in every table
    result = invoke("rm", he1[:7], "--yes", "-r", str(store))
    assert result.exit_code == 0, result.output
    counted = {t: len(rs) for t, rs in of_rows(before, gone).items()}
    assert lines(result.stdout)[0] == f"would delete 1 run (2 attempts) from {store}:"
    assert lines(result.stdout)[-1] == (f"deleted 1 run (rows: epochs {counted['epochs']}, extra 2, "
                                        f"layers {counted['layers']}, predictions 2, tags 1, runs 2)")
    after = rows(store)
    kept = {r[0] for r in before["runs"]} - gone
    assert after == of_rows(before, kept)  # the others' rows, every table, exactly as they were
    assert he1 not in set(runs(store)["run_id"]) and len(runs(store)) == 4


def test_rm_by_where_and_answering_no(store):
    before, files = rows(store), snapshot(store)
    for answer in ("n\n", ""):  # no, and no answer at all (stdin closed)
        result = runner.invoke(app, ["rm", "--where", "depth == 2", "-r", str(store)], input=answer)
        assert result.exit_code == 1 and lines(result.stderr) == ["nothing deleted"]
        assert "delete these 2? [y/N]" in result.stdout
        assert snapshot(store) == files
    yes = runner.invoke(app, ["rm", "--where", "depth == 2", "-r", str(store)], input="y\n")
    assert yes.exit_code == 0, yes.output
    kept = set(load_results(store, history=True)["row_id"])
    assert len(before["runs"]) - len(kept) == 2 and rows(store) == of_rows(before, kept)
    assert sorted(runs(store)["depth"]) == [1, 1, 3]  # the two depth-2 runs are gone


@pytest.mark.parametrize(("args", "line"), [
    (["--where", "depth == 9"], "error: rm: no runs match --where 'depth == 9' in {store}; nothing deleted"),
    (["--where", "depth >= 1"], "error: rm: this selects every run in {store} (5); add --all to delete them all"),
    ([], "error: rm: say which runs: RUN_ID..., --where EXPR or --all"),
    (["abc", "--where", "depth == 1"], "error: rm: give run ids or --where, not both"),
    (["zzz"], "error: no run id starts with 'zzz' in {store}; initsweep report lists them"),
    (["--where", "dpeth == 1"], "error: --where: unknown column 'dpeth' — did you mean 'depth'?"),
])
def test_a_refused_rm_is_one_line_exit_2_and_changes_nothing(store, args, line):
    before = snapshot(store)
    result = invoke("rm", *args, "--yes", "-r", str(store))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert lines(result.stderr) == [line.format(store=store)]
    assert snapshot(store) == before


def test_rm_is_one_transaction(store):
    """A failure after the epochs, layers, tags and extra rows are gone (a trigger refuses the
    runs rows, which go last) rolls all of it back: every row of every table is still there."""
    victim = run_id(store, init="he", depth=1)
    assert invoke("tag", victim, "--add", "t", "-r", str(store)).exit_code == 0
    with sqlite3.connect(store / "initsweep.db") as conn:
        conn.execute("CREATE TRIGGER no_rm BEFORE DELETE ON runs BEGIN SELECT RAISE(ABORT, 'injected'); END")
    conn.close()
    before = rows(store)
    result = invoke("rm", victim, "--yes", "-r", str(store))
    assert result.exit_code == 2
    assert lines(result.stderr) == [f"error: results folder {store} cannot be used: injected"]
    assert rows(store) == before


def test_rm_within_one_sweep(store):
    """--sweep scopes the selection: every run of sweep other is not every run of the store."""
    result = invoke("rm", "--sweep", "other", "--where", "depth >= 1", "--yes", "-r", str(store))
    assert result.exit_code == 0, result.output
    assert sorted(set(runs(store)["sweep"])) == ["ci"] and len(runs(store)) == 4


def test_rm_all_empties_the_store(store):
    result = invoke("rm", "--all", "--yes", "-r", str(store))
    assert result.exit_code == 0, result.output
    assert {t: len(rs) for t, rs in rows(store).items()} == dict.fromkeys(TABLES, 0)


def test_rm_refuses_a_run_being_trained(store):
    """A live claim (this process's) is not deleted from under its sweep: nothing is."""
    with sqlite3.connect(store / "initsweep.db") as conn:
        conn.execute("INSERT INTO runs (run_id, sweep, status, owner, claimed_at, spec_json) "
                     "VALUES ('feedface00000000', 'ci', 'running', ?, '2026-01-01T00:00:00+00:00', '{}')",
                     (process_owner(),))
    conn.close()
    before = snapshot(store)
    result = invoke("rm", "feedface", "--yes", "-r", str(store))
    assert result.exit_code == 2
    assert lines(result.stderr) == [f"error: run feedface00000000 is being trained now (by {process_owner()}); "
                                    "stop that sweep or wait for it, then delete it"]
    assert snapshot(store) == before


def test_rm_and_tag_on_a_read_only_store_say_so_and_change_nothing(store):
    victim = run_id(store, depth=3)
    mode = make_read_only(store)
    try:
        before = snapshot(store)
        for args in (["rm", victim, "--yes"], ["tag", victim, "--add", "x"]):
            result = cli(*args, "-r", str(store))
            assert result.returncode == 2, result.stderr
            assert lines(result.stderr) == [f"error: results folder {store} is read-only: initsweep cannot write "
                                            "its results there (make it writable, or use another results folder)"]
        assert snapshot(store) == before
    finally:
        store.chmod(mode)


def test_an_older_store_without_tags_reads_and_takes_tags(store):
    """A schema-2 store: readers see no tags (and change nothing); tag migrates it in place."""
    with sqlite3.connect(store / "initsweep.db") as conn:
        conn.execute("DROP TABLE tags")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()
    before = snapshot(store)
    assert len(lines(invoke("export", "-r", str(store), "--where", 'tags == None').stdout)) == 1 + 5
    assert snapshot(store) == before
    victim = run_id(store, depth=3)
    assert invoke("tag", victim, "--add", "kept", "-r", str(store)).exit_code == 0
    assert list(load_results(store, where='tags contains "kept"')["run_id"]) == [victim]


# --------------------------------------------------------------------- INITSWEEP_RESULTS


def test_initsweep_results_is_the_default_folder_and_the_flag_wins(built, store, tmp_path):
    env_dir = tmp_path / "from-env"
    env = {"INITSWEEP_RESULTS": str(env_dir)}
    ran = invoke("run", str(built["config"]), "--device", "cpu", "--workers", "1", "--threads", "1", "-q", env=env)
    assert ran.exit_code == 0, ran.output
    assert len(load_results(env_dir)) == 1
    (only,) = load_results(env_dir)["run_id"]
    assert sum(g["runs"] for g in json.loads(invoke("report", "-f", "json", env=env).stdout)) == 1
    assert json.loads(invoke("show", only[:8], "-f", "json", env=env).stdout)["run"]["run_id"] == only
    # --results wins over the variable
    flagged = invoke("report", "-f", "json", "-r", str(store), env=env)
    assert sum(g["runs"] for g in json.loads(flagged.stdout)) == 5
    assert invoke("export", "-r", str(store), env={"INITSWEEP_RESULTS": str(tmp_path / "nowhere")}).exit_code == 0
    missing = invoke("export", env={"INITSWEEP_RESULTS": str(tmp_path / "nowhere")})
    assert missing.exit_code == 2 and lines(missing.stderr) == [f"error: {tmp_path / 'nowhere'}: does not exist"]
    for command in ("run", "report", "export", "show", "check", "tag", "rm"):
        assert "INITSWEEP_RESULTS" in invoke(command, "-h", env={"COLUMNS": "200"}).stdout, command
