"""``initsweep merge``: combine results folders (CI shards) into one.

The current rows of each source (with their epochs, layers, tags and the rows of any other
table keyed by ``row_id``: ``store.child_tables``) are copied into the target in one
transaction; a run already there with the same result is skipped (the source's tags added to
it), one with a different result is a conflict, reported and left as it was. Every source is opened and
checked before the target is touched, so a failed merge changes nothing.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import InitsweepError
from .store import CURRENT_ROWS, DB_NAME, FINISHED, Store, child_tables


@dataclass
class MergeReport:
    added: int = 0
    identical: int = 0
    conflicts: list[str] = field(default_factory=list)
    sources: int = 0


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
    finally:
        for _, src in opened:
            src.close()
    return report


def _merge_one(src: sqlite3.Connection, conn: sqlite3.Connection, run_cols: list[str], report: MergeReport,
               name: str) -> None:
    src_cols = {r[1] for r in src.execute("PRAGMA table_info(runs)")}
    tables = sorted(set(child_tables(src)) & set(child_tables(conn)))
    rows = src.execute(f"SELECT * FROM runs WHERE row_id IN ({CURRENT_ROWS}) AND status != 'running' "
                       "ORDER BY row_id").fetchall()
    for row in rows:
        have = conn.execute(
            "SELECT * FROM runs WHERE sweep = ? AND run_id = ? ORDER BY row_id DESC LIMIT 1",
            (row["sweep"], row["run_id"])).fetchone()
        if have is not None and have["status"] in FINISHED:
            if _same(have, row):
                report.identical += 1
                tags = [t for t in tables if t == "tags"]  # the source's tags join the run's there
                _copy_children(src, conn, row["row_id"], have["row_id"], tags, keep=True)
            else:
                report.conflicts.append(
                    f"{row['sweep']}/{row['run_id']}: {name} has {row['status']} test_acc={row['test_acc']}, "
                    f"the merged results have {have['status']} test_acc={have['test_acc']} (kept)")
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
