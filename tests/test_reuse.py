"""Issue 16, reuse and status, through the real CLI on tiny real runs: a finished run is
found by its run id in the whole results folder (a renamed or copied config trains only
what is new), ``plan --results`` says where each run stands, and ``run --fail-fast`` stops
at the first failed run."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import yaml
from test_ci import TINY, invoke, write_config
from test_data import sample, write_dataset

from initsweep import load_results
from initsweep.results.store import SCHEMA_VERSION, process_owner

GRID = {"depth": [1, 2]}


def rows(results: Path, sql: str = "SELECT sweep, status, COUNT(*) FROM runs GROUP BY sweep, status") -> list:
    with sqlite3.connect(results / "initsweep.db") as conn:
        return sorted(conn.execute(sql).fetchall())


def renamed(config: Path, path: Path, name: str, **grid) -> Path:
    """A copy of ``config`` under another sweep name, with ``grid`` axes replaced."""
    cfg = yaml.safe_load(config.read_text())
    cfg["name"], cfg["grid"] = name, {**cfg["grid"], **grid}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config: Path, results: Path, *extra: str):
    return invoke("run", str(config), "--results", str(results), "--device", "cpu", "--threads", "1", "-q", *extra)


def plan_json(config: Path, results: Path) -> dict:
    result = invoke("plan", str(config), "--results", str(results), "-f", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_renamed_config_trains_nothing_and_its_report_lists_the_reused_runs(tmp_path):
    old = write_config(tmp_path / "old.yaml", GRID)
    res = tmp_path / "res"
    assert run(old, res).exit_code == 0
    new = renamed(old, tmp_path / "new.yaml", "new")
    result = run(new, res)
    assert result.exit_code == 0, result.output
    assert "new: 2 runs planned, 2 already finished, 0 to run" in result.stdout
    assert "this run: nothing; skipped 0\n2 reused from sweep ci\nsweep so far: 2 ok\n" in result.stdout
    assert rows(res) == [("ci", "ok", 2)]  # nothing trained, nothing copied
    assert rows(res, "SELECT sweep, run_id FROM reused") == sorted(
        ("new", r) for r in load_results(res, sweep="ci").run_id)

    df = load_results(res, sweep="new")
    assert len(df) == 2 and set(df.sweep) == {"new"} and set(df.reused_from) == {"ci"}
    assert sorted(df.row_id) == sorted(load_results(res, sweep="ci").row_id)  # the very rows of ci
    assert len(load_results(res)) == 2  # every stored attempt once, under the sweep that trained it
    report = invoke("report", "--results", str(res), "--sweep", "new", "-f", "json")
    assert report.exit_code == 0, report.output
    assert sorted(g["depth"] for g in json.loads(report.stdout)) == [1, 2]
    exported = invoke("export", "--results", str(res), "--sweep", "new", "-o", str(tmp_path / "new.csv"))
    assert exported.exit_code == 0 and len(load_results(tmp_path / "new.csv")) == 2

    run_id = df.run_id.iloc[0]
    shown = invoke("show", run_id[:8], "--results", str(res))  # stored once: no --sweep needed
    assert shown.exit_code == 0 and f"run {run_id} · sweep ci · ok" in shown.stdout
    shown = invoke("show", run_id[:8], "--results", str(res), "--sweep", "new")
    assert shown.exit_code == 0 and f"run {run_id} · sweep new · ok · reused from sweep ci\n" in shown.stdout

    again = run(new, res)  # resume: the reused runs are done for new, nothing is reused twice
    assert "2 already finished, 0 to run" in again.stdout and "reused" not in again.stdout
    assert rows(res, "SELECT COUNT(*) FROM reused") == [(2,)]


def test_a_copy_with_one_more_grid_value_trains_only_the_new_run_and_fresh_retrains(tmp_path):
    old = write_config(tmp_path / "old.yaml", GRID)
    res = tmp_path / "res"
    assert run(old, res).exit_code == 0
    wider = renamed(old, tmp_path / "wider.yaml", "wider", depth=[1, 2, 3])
    result = run(wider, res)
    assert result.exit_code == 0, result.output
    assert "this run: 1 ok; skipped 0\n2 reused from sweep ci\nsweep so far: 3 ok" in result.stdout
    assert rows(res) == [("ci", "ok", 2), ("wider", "ok", 1)]
    df = load_results(res, sweep="wider").set_index("depth")
    assert df.reused_from.fillna("-").to_dict() == {1: "ci", 2: "ci", 3: "-"}

    fresh = run(wider, res, "--fresh")  # wider trains all three itself; ci keeps its rows
    assert fresh.exit_code == 0 and "this run: 3 ok; skipped 0\nsweep so far: 3 ok" in fresh.stdout
    assert rows(res) == [("ci", "ok", 2), ("wider", "ok", 4)]
    assert rows(res, "SELECT COUNT(*) FROM reused") == [(0,)]
    after = load_results(res, sweep="wider")
    assert len(after) == 3 and "reused_from" not in after and len(load_results(res, sweep="ci")) == 2


def test_plan_results_says_done_reused_and_left_and_the_work_left(tmp_path):
    config = write_config(tmp_path / "c.yaml", {"depth": [1, 2, 3]})
    res = tmp_path / "res"
    (tmp_path / "empty").mkdir()
    before = plan_json(config, tmp_path / "empty")  # a folder with no store yet: all left
    assert before["totals"] == {"done": 0, "failed": 0, "interrupted": 0, "running": 0, "left": 3}
    assert before["work_left"]["train_samples"] == before["work"]["train_samples"]
    assert run(config, res, "--max-runs", "1").exit_code == 0  # half done
    summary = plan_json(config, res)
    statuses = {r["run_id"]: r["status"] for r in summary["runs"]}
    assert summary["totals"] == {"done": 1, "failed": 0, "interrupted": 0, "running": 0, "left": 2}
    assert list(statuses.values()).count("done") == 1
    assert set(statuses[r] for r in load_results(res).run_id) == {"done"}
    left = [r for r in summary["runs"] if r["status"] == "left"]
    assert summary["work_left"]["n_runs"] == 2
    assert summary["work_left"]["train_samples"] == sum(r["train_samples"] for r in left)

    # a claim held by a live process is running; one whose process is gone, interrupted
    live, dead = [r["run_id"] for r in summary["runs"] if r["status"] == "left"]
    conn = sqlite3.connect(res / "initsweep.db")
    with conn:
        for run_id, owner in ((live, process_owner()), (dead, f"{socket.gethostname()}:{2 ** 22 + 1}:?")):
            conn.execute("INSERT INTO runs (run_id, sweep, status, owner, claimed_at, spec_json) "
                         "VALUES (?, 'ci', 'running', ?, '2026-01-01T00:00:00+00:00', '{}')", (run_id, owner))
    conn.close()
    claimed = plan_json(config, res)
    assert {r["run_id"]: r["status"] for r in claimed["runs"] if r["run_id"] in (live, dead)} == {
        live: "running", dead: "interrupted"}
    assert claimed["totals"] == {"done": 1, "failed": 0, "interrupted": 1, "running": 1, "left": 0}
    assert claimed["work_left"]["n_runs"] == 2
    with sqlite3.connect(res / "initsweep.db") as conn:
        conn.execute("DELETE FROM runs WHERE status = 'running'")
    conn.close()

    copy = renamed(config, tmp_path / "copy.yaml", "copy")
    reused = plan_json(copy, res)
    assert reused["totals"]["done"] == 1 and reused["reused_from"] == {"ci": 1}
    assert [r["reused_from"] for r in reused["runs"] if r["status"] == "done"] == ["ci"]
    table = invoke("plan", str(copy), "--results", str(res))
    assert f"in {res}: 1 done, 1 of them from sweep ci, 0 failed, 2 left\n" in table.stdout
    assert "work left: 2 run(s), " in table.stdout
    missing = invoke("plan", str(config), "--results", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and missing.stderr == f"error: {tmp_path / 'nowhere'}: does not exist\n"


def mnist_config(path: Path, root: Path) -> Path:
    """Real MNIST-format files at ``root`` (the sample's digits as IDX); run ids do not
    depend on ``data.root``, so configs that differ only there plan the same runs."""
    return write_config(path, {"depth": [1, 2, 3]}, data={**TINY, "dataset": "mnist", "root": str(root)})


def corrupt_dataset(root: Path) -> None:
    """IDX files whose headers promise images the files do not hold: every run fails."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / stem).write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")


def test_plan_results_counts_a_failed_run_and_the_work_left_includes_it(tmp_path):
    write_dataset(tmp_path / "good" / "MNIST" / "raw", sample(), gz=False)
    corrupt_dataset(tmp_path / "bad")
    good, bad = mnist_config(tmp_path / "good.yaml", tmp_path / "good"), mnist_config(tmp_path / "bad.yaml",
                                                                                       tmp_path / "bad")
    res = tmp_path / "res"
    assert run(good, res, "--max-runs", "1").exit_code == 0
    assert run(bad, res, "--max-runs", "1").exit_code == 1
    assert rows(res) == [("ci", "failed", 1), ("ci", "ok", 1)]
    summary = plan_json(good, res)
    assert summary["totals"] == {"done": 1, "failed": 1, "interrupted": 0, "running": 0, "left": 1}
    assert summary["work_left"]["n_runs"] == 2  # a failed run is trained again
    failed = load_results(res, where="status == 'failed'").run_id.iloc[0]
    assert {r["run_id"]: r["status"] for r in summary["runs"]}[failed] == "failed"


def test_fail_fast_stops_at_the_first_failed_run_in_process(tmp_path):
    corrupt_dataset(tmp_path / "bad")
    config = mnist_config(tmp_path / "c.yaml", tmp_path / "bad")
    result = run(config, tmp_path / "res", "--fail-fast")
    assert result.exit_code == 1, result.output
    assert rows(tmp_path / "res") == [("ci", "failed", 1)]  # the two runs after it never started
    failed = load_results(tmp_path / "res").iloc[0]
    assert result.stderr.startswith(f"stopped at the first failed run (--fail-fast): run {failed.run_id} failed: "
                                    "DataError: ")
    assert "this run: 1 failed; skipped 0" in result.stdout
    assert run(config, tmp_path / "res2").exit_code == 1  # without it every run is tried
    assert rows(tmp_path / "res2") == [("ci", "failed", 3)]


def test_fail_fast_with_the_worker_pool_interrupts_the_run_in_flight(tmp_path):
    corrupt_dataset(tmp_path / "bad")
    config = mnist_config(tmp_path / "c.yaml", tmp_path / "bad")
    result = invoke("run", str(config), "--results", str(tmp_path / "res"), "--device", "cpu", "--workers", "2",
                    "--threads", "1", "-q", "--fail-fast")
    assert result.exit_code == 1, result.output
    # both workers got a run at the start; the first failure stops the sweep: the other run
    # is recorded interrupted (whether or not it had failed too), the third never started
    assert rows(tmp_path / "res") == [("ci", "failed", 1), ("ci", "interrupted", 1)]
    interrupted = load_results(tmp_path / "res", where="status == 'interrupted'").error.iloc[0]
    assert interrupted.startswith("interrupted (run ") and interrupted.endswith(" failed first: fail_fast)")
    assert "stopped at the first failed run (--fail-fast)" in result.stderr
    summary = plan_json(config, tmp_path / "res")
    assert summary["totals"] == {"done": 0, "failed": 1, "interrupted": 1, "running": 0, "left": 1}
    assert summary["work_left"]["n_runs"] == 3


def test_merge_carries_the_reuse_records(tmp_path):
    old = write_config(tmp_path / "old.yaml", GRID)
    res = tmp_path / "res"
    assert run(old, res).exit_code == 0
    assert run(renamed(old, tmp_path / "new.yaml", "new", depth=[1, 2, 3]), res).exit_code == 0
    merged = invoke("merge", str(res), "--into", str(tmp_path / "merged"))
    assert merged.exit_code == 0, merged.output
    assert merged.stdout == (f"merged 1 source(s) into {tmp_path / 'merged'}: 3 run(s) added, 0 already there, "
                             "2 reuse record(s) added\n")
    columns = ["sweep", "run_id", "status", "test_acc", "reused_from"]
    for sweep in ("ci", "new"):
        a, b = load_results(res, sweep=sweep), load_results(tmp_path / "merged", sweep=sweep)
        assert len(a) == len(b) == (2 if sweep == "ci" else 3)
        assert a.reindex(columns=columns).sort_values("run_id").astype(str).values.tolist() == \
            b.reindex(columns=columns).sort_values("run_id").astype(str).values.tolist()
    again = invoke("merge", str(res), "--into", str(tmp_path / "merged"))  # idempotent
    assert again.exit_code == 0 and "0 run(s) added, 5 already there\n" in again.stdout


def test_a_schema_2_store_is_read_as_it_is_and_gains_the_reused_table_when_run_writes(tmp_path):
    old = write_config(tmp_path / "old.yaml", GRID)
    res = tmp_path / "res"
    assert run(old, res).exit_code == 0
    conn = sqlite3.connect(res / "initsweep.db")
    with conn:  # the store as initsweep's schema 2 left it: no reused table
        conn.execute("DROP TABLE reused")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()
    db = (res / "initsweep.db").read_bytes()
    new = renamed(old, tmp_path / "new.yaml", "new")
    assert len(load_results(res, sweep="ci")) == 2
    assert invoke("report", "--results", str(res), "--sweep", "ci", "-f", "json").exit_code == 0
    summary = plan_json(new, res)
    assert summary["totals"]["done"] == 2 and summary["reused_from"] == {"ci": 2}
    assert (res / "initsweep.db").read_bytes() == db  # the readers changed nothing
    result = run(new, res)
    assert result.exit_code == 0 and "2 reused from sweep ci" in result.stdout
    assert rows(res, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert len(load_results(res, sweep="new")) == 2


def test_merge_refuses_a_reuse_record_whose_sweep_holds_another_result(tmp_path):
    old = write_config(tmp_path / "old.yaml", GRID)
    new = renamed(old, tmp_path / "new.yaml", "new")
    reusing, target = tmp_path / "reusing", tmp_path / "target"
    assert run(old, reusing).exit_code == 0 and run(new, reusing).exit_code == 0  # new reuses ci's rows
    assert run(new, target).exit_code == 0  # new trained here itself...
    conn = sqlite3.connect(target / "initsweep.db")
    with conn:  # ...and got other numbers (as on another machine)
        conn.execute("UPDATE runs SET test_acc = test_acc + 0.5")
    conn.close()
    kept = load_results(target, sweep="new")[["run_id", "test_acc"]].values.tolist()
    merged = invoke("merge", str(reusing), "--into", str(target))
    assert merged.exit_code == 1
    assert merged.stdout == f"merged 1 source(s) into {target}: 2 run(s) added, 0 already there\n"
    text = " ".join(merged.stderr.split())  # rich wraps lines at the terminal's width
    assert text.startswith("conflict: new/") and text.count("conflict: new/") == 2
    assert text.count(" reuses ci's ok test_acc=") == 2 and text.count(", the merged results have ok test_acc=") == 2
    assert text.endswith(" (kept)") and text.count(" (kept)") == 2
    assert load_results(target, sweep="new")[["run_id", "test_acc"]].values.tolist() == kept
    assert rows(target) == [("ci", "ok", 2), ("new", "ok", 2)] and rows(target, "SELECT * FROM reused") == []


def test_a_reused_row_deleted_since_is_trained_again(tmp_path):
    """A record whose row is gone (deleted by hand, or by a future rm) is not a finished run."""
    old = write_config(tmp_path / "old.yaml", GRID)
    res = tmp_path / "res"
    assert run(old, res).exit_code == 0
    new = renamed(old, tmp_path / "new.yaml", "new")
    assert "2 reused from sweep ci" in run(new, res).stdout
    conn = sqlite3.connect(res / "initsweep.db")
    with conn:
        conn.execute("DELETE FROM epochs")
        conn.execute("DELETE FROM runs")
    conn.close()
    assert plan_json(new, res)["totals"]["left"] == 2
    assert len(load_results(res, sweep="new")) == 0
    result = run(new, res)
    assert result.exit_code == 0 and "this run: 2 ok; skipped 0\nsweep so far: 2 ok" in result.stdout
    assert rows(res) == [("new", "ok", 2)] and rows(res, "SELECT * FROM reused") == []
