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
import socket
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pandas as pd

from .errors import StoreError

if TYPE_CHECKING:  # importing config pulls in torch: ~2 s that report/export/show do not need
    from .config import RunSpec

DB_NAME = "initsweep.db"
# 2: layers gained pre_m2, act_m2, act_grad_norm2, sigma_w2 and predicted_* (probe.py);
#    older databases get the missing columns (NULL in old rows) when opened for writing.
SCHEMA_VERSION = 2
STALE_CLAIM_S = 6 * 3600.0
FINISHED = ("ok", "diverged")
STATUSES = ("running", "ok", "diverged", "failed", "interrupted")

_SETTING_COLUMNS = {
    "seed": "INTEGER", "init": "TEXT", "init_params": "TEXT", "init_label": "TEXT", "activation": "TEXT",
    "activation_params": "TEXT", "activation_label": "TEXT", "bias": "TEXT", "bias_params": "TEXT",
    "bias_label": "TEXT", "arch": "TEXT",
    "depth": "INTEGER", "width": "INTEGER", "norm": "TEXT", "padding": "TEXT", "head": "TEXT", "dataset": "TEXT",
    "val_fraction": "REAL", "split_seed": "INTEGER", "train_limit": "INTEGER", "test_limit": "INTEGER",
    "optimizer": "TEXT", "lr": "REAL", "momentum": "REAL", "nesterov": "INTEGER",
    "weight_decay": "REAL", "batch_size": "INTEGER", "epochs": "INTEGER", "max_steps": "INTEGER",
    "diverge_factor": "REAL", "precision": "TEXT",
}
_RESULT_COLUMNS = {
    "dataset_requested": "TEXT", "data_location": "TEXT", "data_fallback": "TEXT",
    "n_train": "INTEGER", "n_val": "INTEGER", "n_test": "INTEGER",
    "test_acc": "REAL", "test_loss": "REAL", "best_val_acc": "REAL", "final_train_loss": "REAL",
    "final_train_acc": "REAL", "final_val_loss": "REAL", "final_val_acc": "REAL",
    "steps": "INTEGER", "diverged_step": "INTEGER", "error": "TEXT", "verdict": "TEXT",
    "setup_seconds": "REAL", "train_seconds": "REAL", "eval_seconds": "REAL", "wall_seconds": "REAL",
    "samples_per_sec": "REAL", "device": "TEXT", "initsweep_version": "TEXT", "torch_version": "TEXT",
    "python_version": "TEXT", "host": "TEXT", "owner": "TEXT", "claimed_at": "TEXT", "finished_at": "TEXT",
    "worker": "TEXT", "threads": "INTEGER", "memory_format": "TEXT", "compiled": "INTEGER", "batched": "INTEGER",
    "peak_rss_mb": "REAL", "compile_seconds": "REAL",
}
LAYER_COLUMNS = {
    "kind": "TEXT", "fan_in": "INTEGER", "pre_mean": "REAL", "pre_std": "REAL", "act_mean": "REAL",
    "act_std": "REAL", "act_grad_std": "REAL", "weight_grad_std": "REAL", "weight_std": "REAL",
    "dead_frac": "REAL", "saturated_frac": "REAL", "predicted_act_var": "REAL",
    "pre_m2": "REAL", "act_m2": "REAL", "act_grad_norm2": "REAL", "sigma_w2": "REAL",
    "predicted_pre_m2": "REAL", "predicted_act_m2": "REAL", "predicted_act_grad_norm2": "REAL",
}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    sweep TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    {", ".join(f"{c} {t}" for c, t in {**_SETTING_COLUMNS, **_RESULT_COLUMNS}.items())},
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
"""

# The latest attempt of each (sweep, run_id): what a run's state *is*.
CURRENT_ROWS = "SELECT MAX(row_id) FROM runs GROUP BY sweep, run_id"


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
    """A results folder's database. Open with ``Store(dir)``; it is created if missing."""

    def __init__(self, results_dir: str | Path, *, create: bool = True):
        self.dir = Path(results_dir)
        self.path = self.dir / DB_NAME
        if not create and not self.path.is_file():
            raise StoreError(f"{self.dir}: not a results folder (no {DB_NAME}; create one with initsweep run)")
        try:
            if create:
                self.dir.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout = 60000")
            if create:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
            else:
                self._check_version()
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(f"results folder {self.dir} cannot be used: {reason}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue instead of failing."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
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
            for table, columns in (("runs", {**_SETTING_COLUMNS, **_RESULT_COLUMNS}), ("layers", LAYER_COLUMNS)):
                have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column, kind in columns.items():
                    if column not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # ------------------------------------------------------------------ claims

    def claim(self, spec: RunSpec, *, dataset_requested: str | None = None, data_fallback: str | None = None,
              fresh_since: str | None = None) -> int | None:
        """Claim a run for this process; ``None`` when it is finished or running elsewhere.

        ``fresh_since`` (an ISO time): results finished before it do not count as finished
        (``--fresh``), so they are rerun, and kept as history.
        """
        with self._write() as conn:
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
            settings = {k: _clean(v) for k, v in spec.settings().items() if k in _SETTING_COLUMNS}
            columns = {"run_id": spec.run_id, "sweep": spec.sweep, "status": "running", **settings,
                       "dataset_requested": dataset_requested or spec.data.dataset, "data_fallback": data_fallback,
                       "owner": process_owner(), "host": socket.gethostname(), "claimed_at": _now(),
                       "spec_json": spec.to_json()}
            cursor = conn.execute(
                f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                list(columns.values()))
            return int(cursor.lastrowid)

    def finish(self, row_id: int, result: Any) -> None:
        """Record a finished attempt (a ``train.RunResult``) with its epochs and layers, atomically."""
        env = result.environment or {}
        last = result.epochs[-1] if result.epochs else None
        values = {
            "status": result.status, "error": result.error, "diverged_step": result.diverged_step,
            "steps": result.steps, "test_acc": result.test_acc, "test_loss": result.test_loss,
            "best_val_acc": result.best_val_acc, "final_train_loss": result.final_train_loss,
            "final_train_acc": result.final_train_acc,
            "final_val_loss": last.val_loss if last else None, "final_val_acc": last.val_acc if last else None,
            "n_train": result.n_train, "n_val": result.n_val, "n_test": result.n_test,
            "setup_seconds": result.setup_seconds, "train_seconds": result.train_seconds,
            "eval_seconds": result.eval_seconds, "wall_seconds": result.wall_seconds,
            "samples_per_sec": result.samples_per_sec, "device": result.device,
            "data_location": result.data_location, "verdict": getattr(result, "verdict", None),
            "initsweep_version": env.get("initsweep"), "torch_version": env.get("torch"),
            "python_version": env.get("python"), "host": env.get("host"), "finished_at": _now(),
            "worker": env.get("worker"), "threads": env.get("threads"), "memory_format": result.memory_format,
            "compiled": result.compiled, "batched": result.batched, "peak_rss_mb": result.peak_rss_mb,
            "compile_seconds": result.compile_seconds,
        }
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

    def mark_interrupted(self, row_id: int, reason: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? "
                         "WHERE row_id = ? AND status = 'running'", (reason, _now(), row_id))

    # ------------------------------------------------------------------ reading

    def finished_run_ids(self, sweep: str, fresh_since: str | None = None) -> set[str]:
        """Run ids of ``sweep`` whose current attempt finished (after ``fresh_since`` if given)."""
        rows = self.conn.execute(
            f"SELECT run_id, finished_at FROM runs WHERE row_id IN ({CURRENT_ROWS}) AND sweep = ? "
            f"AND status IN {FINISHED}", (sweep,)).fetchall()
        return {r["run_id"] for r in rows if fresh_since is None or (r["finished_at"] or "") >= fresh_since}

    def runs_frame(self, sweep: str | list[str] | None = None, history: bool = False) -> pd.DataFrame:
        """The runs table as a DataFrame: current attempts only, unless ``history``."""
        sql, params = "SELECT * FROM runs WHERE 1 = 1", []
        if not history:
            sql += f" AND row_id IN ({CURRENT_ROWS})"
        if sweep is not None:
            names = [sweep] if isinstance(sweep, str) else list(sweep)
            sql += f" AND sweep IN ({', '.join('?' * len(names))})"
            params += names
        return pd.read_sql_query(sql + " ORDER BY row_id", self.conn, params=params)

    def epochs_frame(self, row_ids: list[int] | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM epochs"
        if row_ids is not None:
            sql += f" WHERE row_id IN ({', '.join(str(int(r)) for r in row_ids) or 'NULL'})"
        return pd.read_sql_query(sql + " ORDER BY row_id, epoch", self.conn)

    def layers_frame(self, row_ids: list[int] | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM layers"
        if row_ids is not None:
            sql += f" WHERE row_id IN ({', '.join(str(int(r)) for r in row_ids) or 'NULL'})"
        return pd.read_sql_query(sql + " ORDER BY row_id, phase, layer", self.conn)


def load_results(results_dir: str | Path, sweep: str | list[str] | None = None, history: bool = False) -> pd.DataFrame:
    """One row per run (its latest attempt), every setting a column: the public way in.

    >>> df = load_results("results")                       # doctest: +SKIP
    >>> df.groupby(["init", "activation", "depth"]).test_acc.mean()  # doctest: +SKIP
    """
    with Store(results_dir, create=False) as store:
        return store.runs_frame(sweep, history=history)
