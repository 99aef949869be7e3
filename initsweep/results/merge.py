"""``initsweep merge``: combine results folders (CI shards) into one.

The current rows of each source (with their epochs, layers, tags and the rows of any other
table keyed by ``row_id``: ``store.child_tables``) are copied into the target in one
transaction; a run already there with the same result is skipped (the source's tags added to
it), one with a different result is a conflict, reported and left as it was. Every source is opened and
checked before the target is touched, so a failed merge changes nothing.

Reuse records (a sweep's runs taken from another sweep's rows) come along once every
source's rows are in: each points at the target's row of the run in the sweep that trained
it, which must hold the same result (else a conflict, as for a row).
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import InitsweepError
from .store import CURRENT_ROWS, DB_NAME, FINISHED, POINTER_TABLES, Store, child_tables


@dataclass
class MergeReport:
    added: int = 0
    identical: int = 0
    conflicts: list[str] = field(default_factory=list)
    sources: int = 0
    reused: int = 0  # reuse records added


_SAME_RESULT = ("status", "test_acc", "test_loss", "steps", "diverged_step")


def _same(a: sqlite3.Row, b: sqlite3.Row) -> bool:
    for col in _SAME_RESULT:
        x, y = a[col], b[col]
        if isinstance(x, float) and isinstance(y, float):
            if not math.isclose(x, y, rel_tol=0, abs_tol=0):
                return False
        elif x != y:
            return False
    return True


def _held(conn: sqlite3.Connection, sweep: str, run_id: str) -> sqlite3.Row | None:
    """The target's state of a run in a sweep: the row it reuses, else its latest attempt."""
    return conn.execute(
        "SELECT runs.* FROM reused u JOIN runs ON runs.row_id = u.row_id WHERE u.sweep = ? AND u.run_id = ?",
        (sweep, run_id)).fetchone() or conn.execute(
        "SELECT * FROM runs WHERE sweep = ? AND run_id = ? ORDER BY row_id DESC LIMIT 1", (sweep, run_id)).fetchone()


def _known(report: MergeReport, have: sqlite3.Row | None, row: sqlite3.Row, what: str) -> bool:
    """Does the target hold this run finished already? The same result counts as identical,
    another one is a conflict (the target keeps its own); ``what`` starts the conflict's line."""
    if have is None or have["status"] not in FINISHED:
        return False
    if _same(have, row):
        report.identical += 1
    else:
        report.conflicts.append(f"{what} {row['status']} test_acc={row['test_acc']}, "
                                f"the merged results have {have['status']} test_acc={have['test_acc']} (kept)")
    return True


def merge(sources: Iterable[str | Path], into: str | Path) -> MergeReport:
    """Copy every source's current runs into ``into`` (created if needed); idempotent.

    A merge that fails creates and changes nothing: every source is opened and checked
    (it exists, is an initsweep store, is not damaged) before the target is touched, and
    the copy is one transaction."""
    report = MergeReport()
    target_path = (Path(into) / DB_NAME).resolve()
    opened: list[tuple[str, Store]] = []
    try:
        for source in sources:
            opened.append((str(source), Store(source, create=False)))
            if opened[-1][1].path.resolve() == target_path:
                raise InitsweepError(f"merge: {source} is the target folder itself")
        with Store(into) as target, target._write() as conn:
            run_cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)") if r[1] != "row_id"]
            for name, src in opened:
                report.sources += 1
                with src.guard():
                    _merge_one(src.conn, conn, run_cols, report, name)
            for name, src in opened:  # after every source's rows: a record may point at another's
                with src.guard():
                    _merge_reused(src, conn, report, name)
    finally:
        for _, src in opened:
            src.close()
    return report


def _merge_one(src: sqlite3.Connection, conn: sqlite3.Connection, run_cols: list[str], report: MergeReport,
               name: str) -> None:
    src_cols = {r[1] for r in src.execute("PRAGMA table_info(runs)")}
    # an attempt's own rows; reuse records are merged on their own terms (_merge_reused)
    tables = sorted(set(child_tables(src)) & set(child_tables(conn)) - set(POINTER_TABLES))
    rows = src.execute(f"SELECT * FROM runs WHERE row_id IN ({CURRENT_ROWS}) AND status != 'running' "
                       "ORDER BY row_id").fetchall()
    for row in rows:
        have = _held(conn, row["sweep"], row["run_id"])
        if _known(report, have, row, f"{row['sweep']}/{row['run_id']}: {name} has"):
            if _same(have, row):  # the source's tags join the run's there
                _copy_children(src, conn, row["row_id"], have["row_id"], [t for t in tables if t == "tags"], keep=True)
            continue
        if have is not None and row["status"] not in FINISHED:
            report.identical += 1  # an unfinished attempt adds nothing to what is there
            continue
        cols = [c for c in run_cols if c in src_cols]
        cursor = conn.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                              [row[c] for c in cols])
        _copy_children(src, conn, row["row_id"], cursor.lastrowid, tables)
        report.added += 1


def _copy_children(src: sqlite3.Connection, conn: sqlite3.Connection, src_id: int, new_id: int,
                   tables: list[str], keep: bool = False) -> None:
    """Copy one attempt's rows of these tables (keyed by ``row_id``) to the target's attempt
    ``new_id``; ``keep``: a row the target has already (a tag it has) is left as it is."""
    insert = "INSERT OR IGNORE" if keep else "INSERT"
    for table in tables:
        target_cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        source_cols = {r[1] for r in src.execute(f"PRAGMA table_info({table})")}
        cols_t = [c for c in target_cols if c in source_cols]
        for child in src.execute(f"SELECT * FROM {table} WHERE row_id = ?", (src_id,)):
            values = [new_id if c == "row_id" else child[c] for c in cols_t]
            conn.execute(f"{insert} INTO {table} ({', '.join(cols_t)}) VALUES ({', '.join('?' * len(cols_t))})",
                         values)


def _merge_reused(src: Store, conn: sqlite3.Connection, report: MergeReport, name: str) -> None:
    """Copy the source's reuse records: sweep S reuses run R's row trained by sweep T there;
    here S reuses the current row of (T, R), when it holds the same result. Where S already
    holds R finished here, the record adds nothing (same result) or conflicts."""
    if not src.has_reused:
        return
    records = src.conn.execute("SELECT u.sweep AS reused_by, u.reused_at, runs.* FROM reused u "
                               "JOIN runs ON runs.row_id = u.row_id ORDER BY u.reused_at").fetchall()
    for row in records:
        by, run_id, trained_by = row["reused_by"], row["run_id"], row["sweep"]
        if _known(report, _held(conn, by, run_id), row, f"{by}/{run_id}: {name} reuses {trained_by}'s"):
            continue
        trained = conn.execute("SELECT * FROM runs WHERE sweep = ? AND run_id = ? ORDER BY row_id DESC LIMIT 1",
                               (trained_by, run_id)).fetchone()
        if trained is None or not _same(trained, row):
            report.conflicts.append(
                f"{by}/{run_id}: {name} reuses {trained_by}'s {row['status']} test_acc={row['test_acc']}, which "
                f"the merged results do not hold (not reused)")
            continue
        conn.execute("INSERT OR REPLACE INTO reused VALUES (?, ?, ?, ?)", (by, run_id, trained["row_id"],
                                                                           row["reused_at"]))
        report.reused += 1
