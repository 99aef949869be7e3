"""Run tables in: a results folder or a file ``initsweep export`` wrote, read to the same values.

Every known column is coerced to the store's type on the way in (``columns.RUN_COLUMNS``),
so a store and its export compare equal column for column; ``load_results`` is the public
way in, ``find_run`` what ``show`` looks up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..columns import RUN_COLUMNS
from ..errors import InitsweepError, OptionError, ParamError, StoreError
from .query import filter_runs
from .store import DB_NAME, TAGS_COLUMN, Store


_SUFFIXES = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}


# pandas >= 3 reads text as the ``str`` dtype (missing = NaN); older pandas as object.
_TEXT = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


def format_of(path: Path) -> str | None:
    """The run-table format a file name implies (``runs.parquet`` -> parquet), if any."""
    return _SUFFIXES.get(path.suffix.lower())


def _text(col: pd.Series) -> pd.Series:
    if _TEXT == "str":
        return col if col.dtype == "str" else col.astype("str")
    return col.astype(object).where(col.notna(), None)


def normalize(df: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """Give every known column the store's type: integers without gaps as int64, other
    numbers as float64 (NULL = NaN), text as text, whatever file they came from."""
    df = df.copy()
    for col, kind in {**RUN_COLUMNS, TAGS_COLUMN: "TEXT"}.items():
        if col not in df:
            continue
        if kind == "TEXT":
            df[col] = _text(df[col])
            continue
        try:
            values = pd.to_numeric(df[col])
        except (TypeError, ValueError):
            raise StoreError(f"{source}: column {col!r} should hold numbers") from None
        if kind == "INTEGER" and values.notna().all() and (values == values.round()).all():
            values = values.astype("int64")
        df[col] = values.astype("int64" if values.dtype == "int64" else "float64")
    return df


def current_rows(df: pd.DataFrame) -> pd.DataFrame:
    """A run's latest attempt only (highest ``row_id`` per sweep and run), as the store reads it."""
    if not {"row_id", "sweep", "run_id"} <= set(df.columns) or df.empty:
        return df
    latest = df.groupby(["sweep", "run_id"], sort=False)["row_id"].transform("max")
    return df[df["row_id"] == latest]


def need_pyarrow(what: str, param: str | None = None) -> Any:
    """pyarrow, or an error about ``what`` needing it: ``what`` is a file, or with ``param``
    the value of that parameter (``format='parquet'``, at the CLI ``--format parquet``)."""
    try:
        import pyarrow
    except ImportError:
        problem = "parquet needs pyarrow (initsweep's 'parquet' extra): pip install pyarrow"
        if param is not None:
            raise OptionError(param, what, problem) from None
        raise InitsweepError(f"{what}: {problem}") from None
    return pyarrow


def _read_file(path: Path) -> pd.DataFrame:
    fmt = format_of(path)
    if fmt is None:
        raise StoreError(f"{path}: not a results folder or a run export (.csv, .json, .parquet)")
    try:
        if fmt == "csv":
            text_cols = {c: str for c, kind in RUN_COLUMNS.items() if kind == "TEXT"}
            return pd.read_csv(path, dtype=text_cols)
        if fmt == "json":
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError("expected a list of run records")
            return pd.DataFrame.from_records(records)
        need_pyarrow(str(path))
        return pd.read_parquet(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"{path}: cannot read it as {fmt}: {reason}") from None


def _check_sweeps(sweep: str | list[str], stored: set[str], source: Path) -> None:
    """A sweep name that is not stored is a typo, not an empty result: an ``OptionError``
    listing the sweeps that are there (nothing stored yet is just that: no error)."""
    asked = [sweep] if isinstance(sweep, str) else list(sweep)
    unknown = [name for name in asked if name not in stored]
    if unknown and stored:
        raise OptionError("sweep", unknown[0], f"no such sweep in {source} (its sweeps: {', '.join(sorted(stored))})")


def read_runs(source: str | Path, sweep: str | list[str] | None = None, history: bool = False) -> pd.DataFrame:
    """Runs from a results folder or from a file ``initsweep export`` wrote; one row per run
    (its latest attempt) unless ``history``. Naming a sweep that is not there is an error."""
    path = Path(source)
    if path.is_file():
        df = _read_file(path)
        missing = [c for c in ("run_id", "status") if c not in df]
        if missing and not df.empty:
            raise StoreError(f"{path}: not a run export (no {missing[0]!r} column; write one with initsweep export)")
        if sweep is not None and "sweep" in df:
            _check_sweeps(sweep, set(df["sweep"].dropna().astype(str)), path)
            df = df[df["sweep"].isin([sweep] if isinstance(sweep, str) else list(sweep))]
        if not history:
            df = current_rows(df)
        return normalize(df.reset_index(drop=True), str(path))
    with Store(path, create=False) as store:
        if sweep is not None:
            _check_sweeps(sweep, store.sweeps(), path)
        return normalize(store.runs_frame(sweep, history=history), str(path))


def is_empty_folder(path: Path) -> bool:
    """A folder with no database and nothing but dotfiles in it (e.g. a fresh ``results/.gitkeep``)."""
    return path.is_dir() and not (path / DB_NAME).exists() and not any(
        not p.name.startswith(".") for p in path.iterdir())


def load_results(results_dir: str | Path, sweep: str | list[str] | None = None, where: str | None = None,
                 history: bool = False) -> pd.DataFrame:
    """One row per run, every setting a column: from a results folder or an export file.

    ``where`` filters rows with the same safe expressions as ``initsweep report --where``
    (``'depth >= 8 and activation == "relu"'``).

    >>> df = load_results("results", where="status == 'ok'")          # doctest: +SKIP
    >>> summarize(df, "test_acc", ["init", "activation", "depth"])     # doctest: +SKIP
    """
    return filter_runs(read_runs(results_dir, sweep, history), where).reset_index(drop=True)


def read_curves(source: str | Path, row_ids: list[int]) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Per-epoch curves and per-layer statistics of these attempts; ``(None, None)`` for an
    export file, which holds only the runs table."""
    return _from_store(source, lambda store: (store.epochs_frame(row_ids), store.layers_frame(row_ids)),
                       (None, None))


def read_epochs(source: str | Path, row_ids: list[int]) -> pd.DataFrame | None:
    """The per-epoch rows of these attempts (what the MLflow export logs as metric histories);
    None for an export file, which holds only the runs table."""
    return _from_store(source, lambda store: store.epochs_frame(row_ids), None)


def read_layers(source: str | Path, row_ids: list[int]) -> pd.DataFrame | None:
    """The per-layer statistics of these attempts (what ``report`` judges over seeds); None
    for an export file, which holds only the runs table."""
    return _from_store(source, lambda store: store.layers_frame(row_ids), None)


def read_predictions(source: str | Path, row_ids: list[int]) -> dict[int, tuple[Any, Any]]:
    """``row_id -> (predicted, target)`` of these attempts (``Store.predictions``); none from
    an export file, which holds only the runs table, or for runs stored before schema 3."""
    return _from_store(source, lambda store: store.predictions(row_ids), {})


def _from_store(source: str | Path, read: Callable[[Store], Any], missing: Any) -> Any:
    """``read(store)`` of a results folder; ``missing`` for an export file (no store)."""
    path = Path(source)
    if not (path / DB_NAME).is_file():
        return missing
    with Store(path, create=False) as store:
        return read(store)


def _one_run(current: pd.DataFrame, prefix: str, source: str | Path, sweep: str | None) -> pd.Series:
    """The current row of the run whose id starts with ``prefix``; none or several is an error."""
    hits = current[current["run_id"].str.startswith(prefix)] if prefix else current.head(0)
    ids = list(pd.unique(hits["run_id"]))
    if not ids:
        raise InitsweepError(f"no run id starts with {prefix!r} in {source}"
                             + (f" (sweep {sweep})" if sweep else "") + "; initsweep report lists them")
    if len(ids) > 1:
        shown = ", ".join(ids[:4]) + (", ..." if len(ids) > 4 else "")
        raise InitsweepError(f"{prefix!r} matches {len(ids)} runs ({shown}); give more characters")
    if len(hits) > 1:
        raise ParamError(f"run {ids[0]} is stored by sweeps {', '.join(hits['sweep'])}; pick one with {{sweep}}")
    return hits.iloc[0]


def _attempts(every: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Every attempt (row) of these runs, the history included."""
    keys = set(zip(runs["sweep"], runs["run_id"]))
    return every[[key in keys for key in zip(every["sweep"], every["run_id"])]]


def find_run(source: str | Path, prefix: str, sweep: str | None = None) -> dict[str, Any]:
    """The run whose id starts with ``prefix``: its current row, attempts, epochs, layers, tags
    and test predictions (``(predicted, target)``, or None when it has none)."""
    with Store(source, create=False) as store:
        if sweep is not None:
            _check_sweeps(sweep, store.sweeps(), Path(source))
        every = store.runs_frame(sweep, history=True)
        current = store.runs_frame(sweep)  # a sweep's reused runs are its own; a replaced own row is not current
        run = _one_run(current, prefix, source, sweep)
        trained_by = run.get("reused_from") if isinstance(run.get("reused_from"), str) else run["sweep"]
        if trained_by != run["sweep"]:
            every = store.runs_frame(trained_by, history=True)
        attempts = every[(every["run_id"] == run["run_id"]) & (every["sweep"] == trained_by)]
        row_id = [int(run["row_id"])]
        return {"run": run, "epochs": store.epochs_frame(row_id), "layers": store.layers_frame(row_id),
                "attempts": attempts[["row_id", "status", "claimed_at", "finished_at", "error"]],
                "predictions": store.predictions(row_id).get(row_id[0]),
                "tags": store.tags_frame(row_id)}


@dataclass
class Selection:
    """Runs picked for ``tag`` or ``rm``: their current rows, every attempt of them, and how
    many runs the store holds (to tell a selection of everything)."""

    runs: pd.DataFrame
    attempts: pd.DataFrame
    total: int


def select_runs(source: str | Path, prefixes: list[str] = (), where: str | None = None,
                sweep: str | None = None) -> Selection:
    """The runs named by id prefixes (as ``find_run`` takes them: each must name one run), or
    those ``where`` selects (every run with neither), within ``sweep`` if given."""
    with Store(source, create=False) as store:
        if sweep is not None:
            _check_sweeps(sweep, store.sweeps(), Path(source))
        every = normalize(store.runs_frame(history=True), str(source))
    current = current_rows(every)
    scope = current[current["sweep"] == sweep] if sweep is not None else current
    if prefixes:
        picked = pd.DataFrame([_one_run(scope, p.strip(), source, sweep) for p in prefixes])
        picked = picked.drop_duplicates("row_id")
    else:
        picked = filter_runs(scope, where)
    return Selection(picked, _attempts(every, picked), len(current))
