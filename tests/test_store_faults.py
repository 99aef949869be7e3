"""Damaged, foreign, read-only and missing stores through the real CLI: every command says
what is wrong in one line and exits 2, and nothing on disk changes (sha256 of every file in
the folder, -wal and -shm included, before and after)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_ci import invoke, write_config

from initsweep.results.read import load_results
from initsweep.results.store import SCHEMA_VERSION

PAGE = 4096


def snapshot(folder: Path) -> dict[str, str]:
    """Every file in a folder by name -> sha256: a file added, removed or changed shows."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.output
    return result.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A real store of two tiny runs (one per depth), and the config that made it."""
    root = tmp_path_factory.mktemp("faults")
    config = write_config(root / "c.yaml", {"depth": [1, 2]})
    result = invoke("run", str(config), "--results", str(root / "res"), "--device", "cpu", "--workers", "1",
                    "--threads", "1")
    assert result.exit_code == 0, result.output
    assert len(load_results(root / "res")) == 2
    return {"config": config, "store": root / "res"}


@pytest.fixture
def damaged(made, tmp_path) -> Path:
    """A copy of the store whose header and first two pages (the schema, ``meta``) are
    intact and whose every later page (``runs`` and the rest) is overwritten."""
    folder = tmp_path / "damaged"
    shutil.copytree(made["store"], folder)
    db = folder / "initsweep.db"
    data = bytearray(db.read_bytes())
    assert len(data) > 3 * PAGE
    data[2 * PAGE:] = bytes((0xA5, 0x5A, 0x00, 0xFF)) * ((len(data) - 2 * PAGE) // 4)
    db.write_bytes(bytes(data))
    with sqlite3.connect(f"{db.as_uri()}?immutable=1", uri=True) as conn:  # SQLite itself sees the damage
        assert conn.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)  # schema and meta still read
        with pytest.raises(sqlite3.DatabaseError, match="database disk image is malformed"):
            conn.execute("SELECT * FROM runs").fetchall()
    conn.close()
    return folder


def commands(folder: Path, good: Path, config: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Every command that opens a results folder, pointed at ``folder``."""
    return {
        "report": ["report", "-r", str(folder)],
        "export": ["export", "-r", str(folder)],
        "show": ["show", "abc", "-r", str(folder)],
        "check": ["check", "--baseline", str(good), "-r", str(folder)],
        "check-baseline": ["check", "--baseline", str(folder), "-r", str(good)],
        "report-baseline": ["report", "-r", str(good), "--baseline", str(folder)],
        "merge-source": ["merge", str(good), str(folder), "--into", str(tmp_path / "merged")],
        "merge-into": ["merge", str(good), "--into", str(folder)],
        "run": ["run", str(config), "-r", str(folder), "--device", "cpu", "--workers", "1", "--threads", "1"],
    }


COMMANDS = ["report", "export", "show", "check", "check-baseline", "report-baseline", "merge-source",
            "merge-into", "run"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_damaged_store_is_named_with_the_way_out_and_left_byte_identical(made, damaged, tmp_path, command):
    db = damaged / "initsweep.db"
    before = snapshot(damaged)
    result = invoke(*commands(damaged, made["store"], made["config"], tmp_path)[command])
    assert result.exit_code == 2, result.output
    assert error_lines(result) == [f"error: {db} is damaged (database disk image is malformed); recover what it "
                                   f"still holds with SQLite's .recover, e.g. sqlite3 {db} .recover | sqlite3 "
                                   "recovered.db"]
    assert snapshot(damaged) == before
    assert not (tmp_path / "merged").exists()  # a failed merge creates no target


@pytest.fixture
def foreign(tmp_path) -> Path:
    """Another program's SQLite database that happens to be called initsweep.db."""
    folder = tmp_path / "foreign"
    folder.mkdir()
    with sqlite3.connect(folder / "initsweep.db") as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
    conn.close()
    return folder


@pytest.mark.parametrize("command", COMMANDS)
def test_a_foreign_database_is_not_an_initsweep_store_and_stays_untouched(made, foreign, tmp_path, command):
    before = snapshot(foreign)
    result = invoke(*commands(foreign, made["store"], made["config"], tmp_path)[command])
    assert result.exit_code == 2, result.output
    assert error_lines(result) == [
        f"error: {foreign / 'initsweep.db'} is not an initsweep store (an SQLite database with tables notes but "
        "no initsweep schema version); use another results folder"]
    assert snapshot(foreign) == before
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("command", ["report", "run"])
def test_a_file_that_is_not_sqlite_is_not_an_initsweep_store(made, tmp_path, command):
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "initsweep.db").write_text("my notes, not a database\n" * 10)
    before = snapshot(folder)
    result = invoke(*commands(folder, made["store"], made["config"], tmp_path)[command])
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {folder / 'initsweep.db'} is not an initsweep store (not an SQLite "
                                   "database); use another results folder"]
    assert snapshot(folder) == before


def test_an_empty_database_file_reads_as_no_runs_and_run_starts_a_store_in_it(made, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "initsweep.db").write_bytes(b"")
    report = invoke("report", "-r", str(folder))
    assert report.exit_code == 0 and f"no runs in {folder} yet" in report.stdout
    assert (folder / "initsweep.db").stat().st_size == 0  # reading it wrote nothing
    config = write_config(tmp_path / "one.yaml", {"depth": [1]})
    run = invoke("run", str(config), "-r", str(folder), "--device", "cpu", "--workers", "1", "--threads", "1")
    assert run.exit_code == 0, run.output
    assert len(load_results(folder)) == 1


def test_a_failed_merge_leaves_an_existing_target_unchanged(made, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(made["store"], target)
    before = snapshot(target)
    (tmp_path / "notes").mkdir()
    for bad in (tmp_path / "notes", tmp_path / "nope"):  # not a results folder; missing
        result = invoke("merge", str(made["store"]), str(bad), "--into", str(target))
        assert result.exit_code == 2 and len(error_lines(result)) == 1, result.output
        assert snapshot(target) == before


@pytest.mark.parametrize("args", [
    ["check", "--baseline", "{missing}.csv", "-r", "{store}"],
    ["check", "--baseline", "{missing}", "-r", "{store}"],
    ["report", "-r", "{store}", "--baseline", "{missing}.json"],
    ["report", "-r", "{missing}"],
    ["export", "-r", "{missing}"],
    ["show", "abc", "-r", "{missing}"],
    ["merge", "{store}", "{missing}", "--into", "{merged}"],
])
def test_a_missing_path_says_it_does_not_exist(made, tmp_path, args):
    missing = tmp_path / "missing"
    names = {"missing": missing, "store": made["store"], "merged": tmp_path / "merged"}
    result = invoke(*[a.format(**names) for a in args])
    named = next(a.format(**names) for a in args if "{missing}" in a)
    assert result.exit_code == 2
    assert error_lines(result) == [f"error: {named}: does not exist"]
    assert not (tmp_path / "merged").exists()


# ---------------------------------------------------------------------- read-only


_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _drop_dac_capabilities() -> None:
    """In the child before exec: root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH obeys file
    modes like any owner (chmod 555 refuses its writes). Not setuid to an unprivileged uid:
    that uid could not run an interpreter installed under /root (as here, via pyenv)."""
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, out of the bounding set
        if _prctl(24, cap, 0, 0, 0) != 0:  # 24 = PR_CAPBSET_DROP
            os._exit(126)


# a child process the kernel holds to file modes, root or not
AS_OWNER = _drop_dac_capabilities if os.geteuid() == 0 else None


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "initsweep", *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=AS_OWNER, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "300"})


def make_read_only(target: Path) -> int:
    """chmod a folder 555 or a file 444 and check that a child process really cannot write
    it (skip where it can); returns the old mode, to give back."""
    mode = target.stat().st_mode
    target.chmod(0o555 if target.is_dir() else 0o444)
    probe = subprocess.run([sys.executable, "-c", f"open({str(target / 'x' if target.is_dir() else target)!r}, 'a')"],
                           capture_output=True, text=True, timeout=60, preexec_fn=AS_OWNER)
    if probe.returncode == 0:
        target.chmod(mode)
        pytest.skip("cannot make a file read-only for a child process here (root without CAP_SETPCAP?)")
    assert "PermissionError" in probe.stderr
    return mode


@pytest.fixture(params=["folder", "file"])
def read_only(made, tmp_path, request) -> Path:
    """A copy of the store in a read-only folder, or with a read-only database file."""
    folder = tmp_path / "ro"
    shutil.copytree(made["store"], folder)
    target = folder if request.param == "folder" else folder / "initsweep.db"
    mode = make_read_only(target)
    yield folder
    target.chmod(mode)  # let pytest clean up


def test_a_read_only_store_is_read_by_every_read_command_and_refused_by_run(made, read_only, tmp_path):
    before = snapshot(read_only)
    report = cli("report", "-r", str(read_only), "--format", "json")
    assert report.returncode == 0, report.stderr
    assert sorted(r["depth"] for r in json.loads(report.stdout)) == [1, 2]
    export = cli("export", "-r", str(read_only), "--format", "csv")
    assert export.returncode == 0 and len(export.stdout.strip().splitlines()) == 1 + 2
    run_id = str(load_results(made["store"]).run_id.iloc[0])
    show = cli("show", run_id[:8], "-r", str(read_only), "--format", "json")
    assert show.returncode == 0 and run_id in show.stdout
    check = cli("check", "--baseline", str(read_only), "-r", str(read_only))
    assert check.returncode == 0 and "check passed: 2 group(s)" in check.stdout
    baseline = cli("report", "-r", str(made["store"]), "--baseline", str(read_only), "--format", "csv")
    assert baseline.returncode == 0 and len(baseline.stdout.strip().splitlines()) == 1 + 2
    run = cli("run", str(made["config"]), "-r", str(read_only), "--device", "cpu", "--workers", "1")
    assert run.returncode == 2
    # the folder is named when it is what refuses, else the file
    db = read_only / "initsweep.db"
    what = f"results folder {read_only}" if db.stat().st_mode & 0o200 else str(db)
    assert run.stderr.strip().splitlines() == [
        f"error: {what} is read-only: initsweep cannot write its results there (make it writable, or use another "
        "results folder)"]
    assert snapshot(read_only) == before


def test_a_read_only_folder_is_read_through_the_wal_a_killed_writer_left(made, tmp_path):
    folder = tmp_path / "wal"
    shutil.copytree(made["store"], folder)
    # a writer that commits two more runs and dies before checkpointing them into the database
    writer = ("import os, sqlite3, sys\n"
              "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "conn.execute('PRAGMA wal_autocheckpoint = 0')\n"
              "conn.execute(\"INSERT INTO runs (run_id, sweep, status, spec_json) "
              "SELECT run_id || 'f', sweep, status, spec_json FROM runs\")\n"
              "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", writer, str(folder / "initsweep.db")], check=True, timeout=60)
    assert (folder / "initsweep.db-wal").stat().st_size > 0
    for file in folder.iterdir():  # a read-only archive: the -wal and -shm too
        file.chmod(0o444)
    mode = make_read_only(folder)
    try:
        before = snapshot(folder)
        export = cli("export", "-r", str(folder), "--format", "csv")
        assert export.returncode == 0, export.stderr
        assert len(export.stdout.strip().splitlines()) == 1 + 4  # the two in the -wal too
        assert snapshot(folder) == before
    finally:
        folder.chmod(mode)


def _open_store(folder: str, barrier, errors) -> None:
    from initsweep.results.store import Store

    barrier.wait()
    try:
        with Store(folder) as store:
            store.finished_run_ids("s")
    except Exception as exc:  # reported to the test, which names it
        errors.put(repr(exc))


def test_processes_that_open_a_fresh_results_folder_together_all_get_it(tmp_path):
    """Three ``run``s started together on a new folder: switching it to WAL used to fail one
    of them with "database is locked" in 22 of 60 tries (SQLite does not wait on that switch)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # the children only touch SQLite
    errors = ctx.Queue()
    for attempt in range(20):
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_open_store, args=(str(tmp_path / f"r{attempt}"), barrier, errors))
                 for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert all(p.exitcode == 0 for p in procs)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
