"""The results store: one SQLite file per results folder (``<dir>/initsweep.db``).

Why SQLite: it is embedded (no server), survives ``kill -9`` at any moment (WAL journal,
every run committed in one transaction the moment it finishes), lets several processes
share one folder, and pandas reads it directly.

Tables (schema version in ``meta``):

* ``runs`` — one row per *attempt* at a run: its identity (``sweep``, ``run_id``), every
  resolved setting, the data actually used, status, metrics, timings and versions. The
  *current* state of a run is its latest row (highest ``row_id``); older rows are history
  (a failed attempt before a retry, a result before ``--fresh``), never overwritten.
* ``epochs`` — per-epoch curves of each attempt.
* ``layers`` — per-layer signal statistics (at init and after training).
* ``predictions`` — each finished attempt's predicted and true class of every test image
  (two BLOBs, one byte per image, in the test split's order): McNemar's test, per-class
  accuracy and the confusion matrix, without retraining and without the dataset.
* ``tags`` — names a user gave an attempt (``initsweep tag``), each with an optional note.

* ``reused`` — one record per (``sweep``, ``run_id``) that a sweep took from another sweep's
  finished row (``row_id``) instead of training it again: run ids exclude the sweep name, so
  a renamed or copied config finds its finished runs wherever they were trained. The record
  *is* the run's current state in that sweep; the sweep's own claim of the run (``--fresh``)
  removes it. Readers asked for a sweep list the reused rows under that sweep, with
  ``reused_from`` naming the sweep that trained them (``docs/results.md``).

Every table whose rows belong to an attempt says so in its schema (``row_id INTEGER NOT
NULL REFERENCES runs (row_id)``): :meth:`Store.delete_runs` and ``merge`` find such tables
there (:func:`child_tables`), so a table added later is deleted and merged with its runs.
``reused`` refers to an attempt too, without belonging to it (:data:`POINTER_TABLES`): ``rm``
deletes the records pointing at a deleted attempt, and ``merge`` copies records on their own
terms (``merge._merge_reused``), not as an attempt's rows.

Their columns are defined once, in ``columns.py``; the schema below is built from them.

Claims: a process *claims* a run by inserting its ``running`` row inside ``BEGIN
IMMEDIATE``; a run whose latest row is finished (ok/diverged) or claimed by a live
process is not claimed again, so two sweeps on one folder split the work instead of
repeating it. A ``running`` row whose process has died (same host: the process is gone or
is a different process with the same pid; another host: claimed over
``STALE_CLAIM_S`` ago) is marked ``interrupted`` and the run is claimed anew.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import socket
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from ..columns import LAYER_COLUMNS, RESULT_COLUMNS, SETTING_COLUMNS
from ..errors import OptionError, StoreError

if TYPE_CHECKING:  # importing config pulls in torch: ~2 s that report/export/show do not need
    from ..config import RunSpec
    from ..train import RunResult

DB_NAME = "initsweep.db"
_SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database
# 2: layers gained pre_m2, act_m2, act_grad_norm2, sigma_w2 and predicted_* (probe.py);
#    older databases get the missing columns (NULL in old rows) when opened for writing.
# 3: the predictions, tags and reused tables; older databases get them (empty: their runs
#    lack predictions and tags, no run is reused) when opened for writing, and readers of
#    older ones see none. An initsweep of schema 2 refuses a schema-3 store, so its
#    ``merge`` cannot copy runs and leave their predictions behind.
# 4: runs gained the provenance columns (git_commit, git_dirty, cpu_model, gpu_name,
#    cuda/cudnn/torchvision/numpy versions), warnings, traceback, checkpoint and
#    checkpoint_epoch; older databases get them (NULL in old rows) when opened for writing.
SCHEMA_VERSION = 4
PREDICTIONS_SINCE = 3  # the first schema whose runs store their test predictions
STALE_CLAIM_S = 6 * 3600.0
FINISHED = ("ok", "diverged")
STATUSES = ("running", "ok", "diverged", "failed", "interrupted")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    sweep TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    {", ".join(f"{c} {t}" for c, t in {**SETTING_COLUMNS, **RESULT_COLUMNS}.items())},
    spec_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_key ON runs (sweep, run_id, row_id);
CREATE TABLE IF NOT EXISTS epochs (
    row_id INTEGER NOT NULL REFERENCES runs (row_id),
    run_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    train_loss REAL, train_acc REAL, val_loss REAL, val_acc REAL, seconds REAL,
    PRIMARY KEY (row_id, epoch)
);
CREATE TABLE IF NOT EXISTS layers (
    row_id INTEGER NOT NULL REFERENCES runs (row_id),
    run_id TEXT NOT NULL,
    phase TEXT NOT NULL,
    layer INTEGER NOT NULL,
    {", ".join(f"{c} {t}" for c, t in LAYER_COLUMNS.items())},
    PRIMARY KEY (row_id, phase, layer)
);
CREATE TABLE IF NOT EXISTS predictions (
    row_id INTEGER PRIMARY KEY REFERENCES runs (row_id),
    run_id TEXT NOT NULL,
    predicted BLOB NOT NULL,
    target BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    row_id INTEGER NOT NULL REFERENCES runs (row_id),
    tag TEXT NOT NULL,
    note TEXT,
    added_at TEXT NOT NULL,
    PRIMARY KEY (row_id, tag)
);
CREATE TABLE IF NOT EXISTS reused (
    sweep TEXT NOT NULL,
    run_id TEXT NOT NULL,
    row_id INTEGER NOT NULL REFERENCES runs (row_id),
    reused_at TEXT NOT NULL,
    PRIMARY KEY (sweep, run_id)
);
"""

# The latest attempt of each (sweep, run_id): what a run's state *is*.
CURRENT_ROWS = "SELECT MAX(row_id) FROM runs GROUP BY sweep, run_id"
# Own rows that a later reuse record replaces as their sweep's state (see the ``reused`` table).
_NOT_REPLACED = "NOT EXISTS (SELECT 1 FROM reused u WHERE u.sweep = runs.sweep AND u.run_id = runs.run_id)"


# The runs frame's column of each attempt's tags, sorted and comma-joined ("baseline,paper";
# None when it has none): a tag holds no comma, so the text splits back into the tags.
TAGS_COLUMN = "tags"
_TAG = re.compile(r"[\w.:/+=@-]+")


# Tables whose rows refer to an attempt without belonging to it: a reuse record points at
# another sweep's row. rm deletes them with the attempt; merge does not copy them as its rows.
POINTER_TABLES = ("reused",)


def child_tables(conn: sqlite3.Connection) -> list[str]:
    """The tables whose rows belong to an attempt, read from the schema: each refers to
    ``runs (row_id)`` by a foreign key or has a ``row_id`` column. ``delete_runs`` and
    ``merge`` go through these, so a table added later goes with its runs without an edit."""
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('runs', 'meta') "
        "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return [name for name in names
            if any(fk[2] == "runs" for fk in conn.execute(f"PRAGMA foreign_key_list({name})"))
            or "row_id" in {col[1] for col in conn.execute(f"PRAGMA table_info({name})")}]


def check_tag(tag: str) -> str:
    """A tag is one word of letters, digits and ``_ . : / + = @ -`` (no space, no comma:
    the runs frame joins an attempt's tags with commas)."""
    if not _TAG.fullmatch(tag):
        raise OptionError("add", tag, "a tag is letters, digits and _ . : / + = @ - (no spaces or commas)")
    return tag


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (Linux), to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat, counted after "comm)"


def process_owner() -> str:
    """``host:pid:start`` of this process: who holds a claim."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid) or '?'}"


def owner_alive(owner: str | None, claimed_at: str | None) -> bool:
    """Is the process that claimed a run still running?"""
    if not owner:
        return False
    host, pid_text, start = owner.rsplit(":", 2)
    if host != socket.gethostname():
        try:
            age = time.time() - datetime.fromisoformat(claimed_at).timestamp()
        except (TypeError, ValueError):
            return False
        return age < STALE_CLAIM_S
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start == "?" or _process_start(pid) == start


def refuse_live_claims(attempts: Iterable[Mapping[str, Any]]) -> None:
    """Refuse to delete an attempt a live process is training: its ``finish`` would find no
    row. ``attempts``: rows with run_id, status, owner and claimed_at."""
    for row in attempts:
        if row["status"] == "running" and owner_alive(row["owner"], row["claimed_at"]):
            raise StoreError(f"run {row['run_id']} is being trained now (by {row['owner']}); "
                             "stop that sweep or wait for it, then delete it")


def _clean(value: Any) -> Any:
    """SQLite has no NaN/inf; store them as NULL rather than as a wrong number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return int(value)
    return value


class Store:
    """A results folder's database.

    ``Store(dir)`` is the writer (``run``, ``merge --into``): it creates the folder and the
    database when missing (a 0-byte or table-less file counts as new: nothing to lose) and
    checks an existing one before its first write. ``Store(dir, create=False)`` is a reader
    (``report``, ``export``, ``show``, ``check``, merge sources): it creates and changes
    nothing, and ``dir`` may also be the database file itself. Both refuse, with one
    :class:`StoreError`, a file that is not SQLite, damaged, another program's database or
    newer than this initsweep; SQLite errors met later come out the same way (:meth:`guard`).
    """

    has_reused = True  # the reused table exists (every store but an older one opened to read)

    def __init__(self, results_dir: str | Path, *, create: bool = True):
        given = Path(results_dir)
        self.dir, self.path = (given.parent, given) if not create and given.is_file() else (given, given / DB_NAME)
        try:
            if create:
                self._open_writer()
            else:
                self._open_reader(given)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        except OSError as exc:
            raise StoreError(f"results folder {self.dir} cannot be used: {exc.strerror or exc}") from None

    def _open_writer(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for path, what in ((self.dir, f"results folder {self.dir}"), (self.path, str(self.path))):
            if path.exists() and not os.access(path, os.W_OK):
                raise self._read_only(what)
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._check_header()
            probe = self._connect_reader()
            try:  # every check before the first write: writing into a damaged b-tree spreads the damage
                self._inspect(probe)
            finally:
                probe.close()
        self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout = 60000")
        self._switch_to_wal()
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate()

    def _switch_to_wal(self, patience_s: float = 60.0) -> None:
        """``PRAGMA journal_mode = WAL``, waiting for other processes as a write would.

        Switching a new database to WAL needs it to itself, and SQLite answers "database is
        locked" at once rather than through the busy timeout: two ``initsweep run`` started
        together on a fresh folder failed that way (22 of 60 tries of three openers). The
        mode is persistent, so once any process has switched, the others find it done.
        """
        deadline = time.monotonic() + patience_s
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _open_reader(self, given: Path) -> None:
        if not given.exists():
            raise StoreError(f"{given}: does not exist")
        if not self.path.is_file():
            raise StoreError(f"{self.dir}: not a results folder (no {DB_NAME}; create one with initsweep run)")
        self._check_header()
        if self.path.stat().st_size > 0:
            self.conn = self._connect_reader()
            try:
                tables = self._inspect(self.conn)
            except BaseException:
                self.conn.close()
                raise
            if tables:
                self.has_reused = "reused" in tables  # an older store read as it is: no reuse
                return
            self.conn.close()
        # an empty database reads as a store without runs, from memory: the file stays as it is
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.executescript(_SCHEMA)

    def _connect_reader(self) -> sqlite3.Connection:
        """A connection that reads the database and leaves the folder exactly as it was.

        SQLite's WAL mode needs a ``-shm`` (and ``-wal``) file beside the database, so which
        connection depends on the folder:

        * a ``-wal`` is there (a writer is at work, or died before checkpointing) and holds
          something, or the folder is writable: ``mode=ro``, which reads the runs the
          ``-wal`` holds and never checkpoints them into the database;
        * no ``-wal``, folder and file writable: a read-write connection with ``query_only``
          on. It creates ``-wal``/``-shm`` and, as the last connection, removes them again; a
          ``mode=ro`` one would leave both behind;
        * read-only to this process (a shared archive, a CI artifact, a read-only mount) with
          no ``-wal`` or an empty one: nothing can be created, so ``immutable=1``, which reads
          the file without locks or ``-shm``. That is only safe while nobody writes: no
          ``-wal`` content means no writer was at work when it opened; one with more rights
          that started and checkpointed during the read could show it a mix of old and new
          pages (the file itself is never touched by this connection).
        """
        uri = self.path.absolute().as_uri()
        writable = os.access(self.dir, os.W_OK) and os.access(self.path, os.W_OK)
        try:
            wal_bytes: int | None = self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            wal_bytes = None
        if wal_bytes is not None and (wal_bytes > 0 or writable):
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60.0, isolation_level=None)
        elif writable:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            conn.execute("PRAGMA query_only = ON")
        else:
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 60000")
        return conn

    def _check_header(self) -> None:
        with self.path.open("rb") as f:
            head = f.read(len(_SQLITE_HEADER))
        if head and head != _SQLITE_HEADER:
            raise StoreError(f"{self.path} is not an initsweep store (not an SQLite database); "
                             "use another results folder")

    def _inspect(self, conn: sqlite3.Connection) -> list[str]:
        """Refuse a damaged, foreign or newer database; its tables (none: a new, empty store).

        ``PRAGMA quick_check`` reads every page once (O(size), no index cross-checks).
        Measured on a synthetic 222 MB store (20,000 runs, 200,000 epoch and 800,000 layer
        rows) on a shared 2-core machine: 0.45-0.58 s, where the whole ``export`` of it took
        2.9-5.0 s and ``report`` 7.6-8.2 s; milliseconds on a store of a few hundred runs.
        Cheap next to what every command does with the store, and the only check that sees
        damage in pages a command does not read itself (``check`` reads only ``runs``).
        """
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise self._damaged(" ".join(problems[0].split()))
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        if not tables:
            return tables
        version = None
        if "meta" in tables and {"key", "value"} <= {row[1] for row in conn.execute("PRAGMA table_info(meta)")}:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = row[0] if row else None
        if version is None or not str(version).isdigit():
            shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"{self.path} is not an initsweep store (an SQLite database with tables {shown} "
                             "but no initsweep schema version); use another results folder")
        if int(version) > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer initsweep (schema {version}, "
                             f"this one reads up to {SCHEMA_VERSION}); upgrade initsweep")
        return tables

    def _damaged(self, reason: str) -> StoreError:
        db = shlex.quote(str(self.path))
        return StoreError(f"{self.path} is damaged ({reason}); recover what it still holds with SQLite's "
                          f".recover, e.g. sqlite3 {db} .recover | sqlite3 recovered.db")

    def _read_only(self, what: str) -> StoreError:
        return StoreError(f"{what} is read-only: initsweep cannot write its results there "
                          "(make it writable, or use another results folder)")

    def _error(self, exc: BaseException) -> StoreError:
        """A SQLite error (or pandas' wrapper of one) as the user's line: damaged, read-only, or as is."""
        cause = exc.__cause__ if isinstance(exc.__cause__, sqlite3.Error) else exc
        text = str(cause)
        if "malformed" in text or "not a database" in text:
            return self._damaged(text)
        if "readonly" in text:
            return self._read_only(f"results folder {self.dir}")
        return StoreError(f"results folder {self.dir} cannot be used: {text}")

    @contextmanager
    def guard(self) -> Iterator[None]:
        """SQLite errors met after opening (damage in a page the open check could not see, a
        file made read-only meanwhile) become the same one-line :class:`StoreError`."""
        try:
            yield
        except (sqlite3.Error, pd.errors.DatabaseError) as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        with self.guard():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:  # SQLite has rolled back itself after some errors
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _check_version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer initsweep (schema {version}, "
                             f"this one reads up to {SCHEMA_VERSION}); upgrade initsweep")
        return version

    def _migrate(self) -> None:
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
            if exists:
                self._check_version()
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            # CREATE TABLE IF NOT EXISTS leaves an older table as it was: add the columns it lacks
            for table, columns in (("runs", {**SETTING_COLUMNS, **RESULT_COLUMNS}), ("layers", LAYER_COLUMNS)):
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column, kind in columns.items():
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # ------------------------------------------------------------------ claims

    def claim(self, spec: RunSpec, *, dataset_requested: str | None = None, data_fallback: str | None = None,
              fresh_since: str | None = None, git_commit: str | None = None,
              git_dirty: bool | None = None) -> int | None:
        """Claim a run for this process; ``None`` when it is finished or running elsewhere.

        ``fresh_since`` (an ISO time): results finished before it do not count as finished
        (``--fresh``), so they are rerun, and kept as history. ``git_commit``/``git_dirty``:
        the checkout the sweep was started from, recorded with the attempt.
        """
        with self._write() as conn:
            reused = conn.execute("SELECT u.reused_at, runs.row_id AS source FROM reused u LEFT JOIN runs "
                                  "ON runs.row_id = u.row_id WHERE u.sweep = ? AND u.run_id = ?",
                                  (spec.sweep, spec.run_id)).fetchone()
            if reused is not None:
                if reused["source"] is not None and (fresh_since is None or reused["reused_at"] >= fresh_since):
                    return None
                # fresh_since (or a reused row deleted since): this sweep trains the run itself;
                # the reused row stays the other sweep's
                conn.execute("DELETE FROM reused WHERE sweep = ? AND run_id = ?", (spec.sweep, spec.run_id))
            latest = conn.execute(
                "SELECT row_id, status, owner, claimed_at, finished_at FROM runs WHERE sweep = ? AND run_id = ? "
                "ORDER BY row_id DESC LIMIT 1", (spec.sweep, spec.run_id)).fetchone()
            if latest is not None:
                if latest["status"] in FINISHED and (fresh_since is None or latest["finished_at"] >= fresh_since):
                    return None
                if latest["status"] == "running":
                    if owner_alive(latest["owner"], latest["claimed_at"]):
                        return None
                    conn.execute("UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? WHERE row_id = ?",
                                 (f"the process that ran it ({latest['owner']}) died", _now(), latest["row_id"]))
            settings = {k: _clean(v) for k, v in spec.settings().items() if k in SETTING_COLUMNS}
            columns = {"run_id": spec.run_id, "sweep": spec.sweep, "status": "running", **settings,
                       "dataset_requested": dataset_requested or spec.data.dataset, "data_fallback": data_fallback,
                       "owner": process_owner(), "host": socket.gethostname(), "claimed_at": _now(),
                       "git_commit": git_commit, "git_dirty": _clean(git_dirty), "spec_json": spec.to_json()}
            cursor = conn.execute(
                f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                list(columns.values()))
            return int(cursor.lastrowid)

    def finish(self, row_id: int, result: RunResult) -> None:
        """Record a finished attempt (a ``train.RunResult``) with its epochs, layers and test
        predictions, atomically.

        The row's columns are the result's own (``RunResult.to_row()``, which names them after
        ``columns.RESULT_COLUMNS``), so a new result field needs no line here.
        """
        values = {**result.to_row(), "finished_at": _now()}
        with self._write() as conn:
            status = conn.execute("SELECT status FROM runs WHERE row_id = ?", (row_id,)).fetchone()
            if status is None:
                raise StoreError(f"{self.path}: no run row {row_id} to finish")
            conn.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE row_id = ?",
                         [_clean(v) for v in values.values()] + [row_id])
            conn.executemany(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(row_id, result.run_id, e.epoch, _clean(e.train_loss), _clean(e.train_acc), _clean(e.val_loss),
                  _clean(e.val_acc), e.seconds) for e in result.epochs])
            if result.layers:
                cols = ["row_id", "run_id", "phase", "layer", *LAYER_COLUMNS]
                conn.executemany(
                    f"INSERT INTO layers ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [[row_id, result.run_id, layer["phase"], layer["layer"],
                      *(_clean(layer.get(c)) for c in LAYER_COLUMNS)] for layer in result.layers])
            if result.predicted is not None:
                conn.execute("INSERT INTO predictions VALUES (?, ?, ?, ?)",
                             (row_id, result.run_id, result.predicted, result.targets))

    def mark_interrupted(self, row_id: int, reason: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? "
                         "WHERE row_id = ? AND status = 'running'", (reason, _now(), row_id))

    def mark_own_interrupted(self, sweeps: set[str], reason: str) -> int:
        """Mark ``interrupted`` every run of ``sweeps`` this process still holds ``running``;
        how many. A sweep stopped by a signal calls it last: the signal may land after a claim
        was committed and before its caller learnt the row, or while a finish was rolled back,
        and no such row may be left ``running`` by a process that is about to exit."""
        if not sweeps:
            return 0
        with self._write() as conn:
            marks = ", ".join("?" * len(sweeps))
            return conn.execute(f"UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? "
                                f"WHERE status = 'running' AND owner = ? AND sweep IN ({marks})",
                                (reason, _now(), process_owner(), *sorted(sweeps))).rowcount

    def reuse(self, sweep: str, run_ids: list[str]) -> dict[str, str]:
        """Record, for each of ``run_ids`` that ``sweep`` has neither finished nor in flight, the
        latest finished row of that run in another sweep as this sweep's; ``{run_id: the
        sweep it came from}`` for those recorded. One transaction, so two processes of one
        sweep never record a run twice, and a run claimed meanwhile is not reused."""
        recorded: dict[str, str] = {}
        with self._write() as conn:
            states = self._states(conn, sweep)
            elsewhere = self._finished_elsewhere(conn, sweep)
            now = _now()
            for run_id in run_ids:
                if run_id in elsewhere and states.get(run_id, ("",))[0] not in (*FINISHED, "running"):
                    row_id, source = elsewhere[run_id]
                    conn.execute("INSERT OR REPLACE INTO reused VALUES (?, ?, ?, ?)", (sweep, run_id, row_id, now))
                    recorded[run_id] = source
        return recorded

    # ------------------------------------------------------------------ reading

    def _states(self, conn: sqlite3.Connection, sweep: str) -> dict[str, tuple[str, str | None, str | None]]:
        """``run_id -> (status, finished_at, reused from)`` of every run ``sweep`` holds: its
        reuse record where there is one (newer than any own row: claiming removes it), else its
        latest own attempt."""
        states = {r["run_id"]: (r["status"], r["finished_at"], None) for r in conn.execute(
            f"SELECT run_id, status, finished_at FROM runs WHERE row_id IN ({CURRENT_ROWS}) AND sweep = ?",
            (sweep,))}
        if self.has_reused:
            for r in conn.execute("SELECT u.run_id, u.reused_at, runs.status, runs.sweep FROM reused u "
                                  "JOIN runs ON runs.row_id = u.row_id WHERE u.sweep = ?", (sweep,)):
                states[r["run_id"]] = (r["status"], r["reused_at"], r["sweep"])
        return states

    @staticmethod
    def _finished_elsewhere(conn: sqlite3.Connection, sweep: str) -> dict[str, tuple[int, str]]:
        """``run_id -> (row_id, sweep)``: the latest finished current row of each run that a
        sweep other than ``sweep`` trained (what ``sweep`` may reuse)."""
        rows = conn.execute(f"SELECT run_id, row_id, sweep FROM runs WHERE row_id IN ({CURRENT_ROWS}) "
                            f"AND status IN {FINISHED} AND sweep != ? ORDER BY row_id", (sweep,))
        return {r["run_id"]: (r["row_id"], r["sweep"]) for r in rows}

    def run_states(self, sweep: str) -> tuple[dict[str, tuple[str, str | None]], dict[str, str]]:
        """What ``initsweep plan --results`` reports: ``{run_id: (status, reused from)}`` of
        the runs ``sweep`` holds, and ``{run_id: sweep}`` of the runs another sweep finished.
        A ``running`` claim whose process is gone reads ``interrupted``, as the next claim
        will record it."""
        with self.guard():
            states = self._states(self.conn, sweep)
            elsewhere = self._finished_elsewhere(self.conn, sweep)
            dead = {r["run_id"] for r in self.conn.execute(
                f"SELECT run_id, owner, claimed_at FROM runs WHERE row_id IN ({CURRENT_ROWS}) AND sweep = ? "
                "AND status = 'running'", (sweep,)) if not owner_alive(r["owner"], r["claimed_at"])}
        return ({run_id: ("interrupted" if status == "running" and run_id in dead else status, source)
                 for run_id, (status, _, source) in states.items()},
                {run_id: source for run_id, (_, source) in elsewhere.items()})

    def finished_run_ids(self, sweep: str, fresh_since: str | None = None) -> set[str]:
        """Run ids of ``sweep`` whose current attempt finished, or that it reused (after
        ``fresh_since`` if given)."""
        with self.guard():
            states = self._states(self.conn, sweep)
        return {run_id for run_id, (status, finished_at, _) in states.items()
                if status in FINISHED and (fresh_since is None or (finished_at or "") >= fresh_since)}

    def sweeps(self) -> set[str]:
        """The names of the sweeps stored, those that only reused runs included."""
        sql = "SELECT sweep FROM runs" + (" UNION SELECT sweep FROM reused" if self.has_reused else "")
        with self.guard():
            return {row[0] for row in self.conn.execute(sql)}

    def runs_frame(self, sweep: str | list[str] | None = None, history: bool = False) -> pd.DataFrame:
        """The runs table as a DataFrame: current attempts only, unless ``history``.

        Each stored attempt is listed once, under the sweep that made it, except where a
        sweep is named: then the rows it reused from other sweeps are its rows too (current
        attempts only; ``sweep`` is the named one, ``reused_from`` the one that trained it).
        The ``reused_from`` column is there only when such rows are.
        """
        sql, params = "SELECT * FROM runs WHERE 1 = 1", []
        if not history:
            sql += f" AND row_id IN ({CURRENT_ROWS})" + (f" AND {_NOT_REPLACED}" if self.has_reused else "")
        names = [sweep] if isinstance(sweep, str) else list(sweep or [])
        if sweep is not None:
            sql += f" AND sweep IN ({', '.join('?' * len(names))})"
            params += names
        runs = self._frame(sql + " ORDER BY row_id", params)
        if sweep is not None and not history and self.has_reused:
            runs = self._with_reused(runs, names)
        joined = self.tags_frame().groupby("row_id")["tag"].agg(",".join)
        runs[TAGS_COLUMN] = runs["row_id"].map(joined).astype(object).where(lambda tags: tags.notna(), None)
        return runs

    def _with_reused(self, own: pd.DataFrame, names: list[str]) -> pd.DataFrame:
        """``own`` (these sweeps' current rows) with the rows they reused from other sweeps."""
        reused = self._frame(
            f"SELECT runs.*, u.sweep AS reused_by FROM reused u JOIN runs ON runs.row_id = u.row_id "
            f"WHERE u.sweep IN ({', '.join('?' * len(names))}) ORDER BY runs.row_id", names)
        if reused.empty:
            return own
        reused["reused_from"] = reused["sweep"]
        reused["sweep"] = reused.pop("reused_by")
        both = pd.concat([own, reused], ignore_index=True) if not own.empty else reused
        return both.sort_values("row_id", kind="stable", ignore_index=True)

    def tags_frame(self, row_ids: list[int] | None = None) -> pd.DataFrame:
        """Tags of these attempts (all when None), by attempt and name; none in a store older
        than the tags table (a reader does not migrate it)."""
        with self.guard():
            exists = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tags'").fetchone()
            if exists is None:
                return pd.DataFrame({"row_id": pd.Series(dtype="int64"), "tag": pd.Series(dtype=object),
                                     "note": pd.Series(dtype=object), "added_at": pd.Series(dtype=object)})
        sql, params = "SELECT row_id, tag, note, added_at FROM tags", []
        if row_ids is not None:
            sql += " WHERE row_id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps([int(r) for r in row_ids]))
        return self._frame(sql + " ORDER BY row_id, tag", params)

    def epochs_frame(self, row_ids: list[int] | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM epochs"
        if row_ids is not None:
            sql += f" WHERE row_id IN ({', '.join(str(int(r)) for r in row_ids) or 'NULL'})"
        return self._frame(sql + " ORDER BY row_id, epoch")

    def layers_frame(self, row_ids: list[int] | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM layers"
        if row_ids is not None:
            sql += f" WHERE row_id IN ({', '.join(str(int(r)) for r in row_ids) or 'NULL'})"
        return self._frame(sql + " ORDER BY row_id, phase, layer")

    def predictions(self, row_ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """``row_id -> (predicted, target)`` (uint8 arrays, one entry per test image) of the
        attempts that have them; a store older than schema 3, read as it is, has none."""
        with self.guard():
            if not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'predictions'").fetchone():
                return {}
            rows = self.conn.execute(
                f"SELECT row_id, predicted, target FROM predictions "
                f"WHERE row_id IN ({', '.join(str(int(r)) for r in row_ids) or 'NULL'})").fetchall()
        return {int(r["row_id"]): (np.frombuffer(r["predicted"], dtype=np.uint8),
                                   np.frombuffer(r["target"], dtype=np.uint8)) for r in rows}

    def _frame(self, sql: str, params: list | tuple = ()) -> pd.DataFrame:
        with self.guard():
            return pd.read_sql_query(sql, self.conn, params=params)

    # ------------------------------------------------------------------ the user's edits

    def tag_runs(self, row_ids: list[int], add: list[str] = (), remove: list[str] = (),
                 note: str | None = None) -> dict[str, int]:
        """Add and remove tags on these attempts in one transaction; how many attempts each
        tag was added to or removed from (``{"+baseline": 2, "-old": 1}``). Adding a tag an
        attempt has keeps it and, with ``note``, replaces its note."""
        for tag in add:
            check_tag(tag)
        ids = [int(r) for r in row_ids]
        changed: dict[str, int] = {}
        with self._write() as conn:
            for tag in add:
                before = conn.total_changes
                conn.executemany("INSERT OR IGNORE INTO tags (row_id, tag, note, added_at) VALUES (?, ?, ?, ?)",
                                 [(r, tag, note, _now()) for r in ids])
                changed[f"+{tag}"] = conn.total_changes - before
                if note is not None:
                    conn.executemany("UPDATE tags SET note = ? WHERE row_id = ? AND tag = ?",
                                     [(note, r, tag) for r in ids])
            for tag in remove:
                cursor = conn.execute("DELETE FROM tags WHERE tag = ? AND row_id IN (SELECT value FROM json_each(?))",
                                      (tag, json.dumps(ids)))
                changed[f"-{tag}"] = cursor.rowcount
        return changed

    def delete_runs(self, row_ids: list[int]) -> dict[str, int]:
        """Delete these attempts with every row that belongs to them (epochs, layers, tags and
        any other :func:`child_tables` table), in one transaction; the rows deleted per table.

        An attempt a live process is training is refused (its ``finish`` would find no row),
        and then nothing is deleted."""
        ids = json.dumps(sorted({int(r) for r in row_ids}))
        in_ids = "row_id IN (SELECT value FROM json_each(?))"
        with self._write() as conn:
            refuse_live_claims(conn.execute(f"SELECT run_id, status, owner, claimed_at FROM runs WHERE {in_ids}",
                                            (ids,)).fetchall())
            deleted = {table: conn.execute(f"DELETE FROM {table} WHERE {in_ids}", (ids,)).rowcount
                       for table in child_tables(conn)}
            deleted["runs"] = conn.execute(f"DELETE FROM runs WHERE {in_ids}", (ids,)).rowcount
        return deleted


