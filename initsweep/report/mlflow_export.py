"""Stored runs out to MLflow: one MLflow run per run, in an experiment named after its sweep.

``initsweep export --format mlflow --output URI`` (the ``mlflow`` entry of ``formats.py``) calls
:func:`export_to_mlflow`. A run's settings become its params (``columns.SETTING_COLUMNS``, as
stored), its per-epoch rows metric histories with the epoch as the step (``train_loss``,
``train_acc``, ``val_loss``, ``val_acc``, ``epoch_seconds``), its final results metrics
(``FINAL_METRICS``), and everything else the store recorded of it (status, verdict, versions,
the data actually used, timings of setup, device, ...) tags named ``initsweep.<column>``, so a
result column added to ``columns.py`` reaches MLflow as a tag with no edit here.

The ``initsweep.run_id`` tag is the key: exporting again adds only the runs an experiment does
not hold yet, so the export can be repeated after every sweep. An MLflow run is terminated
last, so one left ``RUNNING`` by an export that died half-way is deleted and written anew; a
run deleted in MLflow is exported again. Runs still training (``running``) are left for a
later export.

mlflow is imported here only, when the format is used: it takes seconds to import.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator
from urllib.parse import urlparse

import pandas as pd

from ..columns import RESULT_COLUMNS, RUN_COLUMNS, SETTING_COLUMNS
from ..errors import OptionError, ParamError
from ..results.store import TAGS_COLUMN

TAG_PREFIX = "initsweep."
KEY = TAG_PREFIX + "run_id"

# epochs table column -> metric name (``seconds`` alone would read as the run's duration)
EPOCH_METRICS = {"train_loss": "train_loss", "train_acc": "train_acc", "val_loss": "val_loss",
                 "val_acc": "val_acc", "seconds": "epoch_seconds"}

# The results that are measurements of the run (metrics); every other result column is a tag.
FINAL_METRICS = ("test_acc", "test_loss", "best_val_acc", "final_train_loss", "final_train_acc",
                 "final_val_loss", "final_val_acc", "steps", "diverged_step", "setup_seconds",
                 "train_seconds", "eval_seconds", "wall_seconds", "samples_per_sec", "peak_rss_mb",
                 "compile_seconds")

# initsweep's status -> MLflow's run status (a diverged run finished: its status tag says so)
RUN_STATUS = {"ok": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

_EXTRA = "(initsweep's 'mlflow' extra): pip install 'initsweep[mlflow]'"


@dataclass(frozen=True)
class MlflowExport:
    """What an export did: runs added, runs skipped because the experiment holds them
    already, runs left out because they are still training, and the experiments written."""

    uri: str
    added: int
    skipped: int
    running: int
    experiments: tuple[str, ...]

    def summary(self) -> str:
        if not self.experiments:
            return f"0 runs added to {self.uri} (mlflow): no runs selected"
        line = (f"{self.added} runs added to {self.uri} (mlflow, experiments {', '.join(self.experiments)}); "
                f"{self.skipped} skipped: exported before")
        return line + (f"; {self.running} still running, not exported" if self.running else "")


def export_to_mlflow(runs: pd.DataFrame, epochs: pd.DataFrame | None, uri: str) -> MlflowExport:
    """Write ``runs`` (one row per run, as ``load_results`` reads them) to the MLflow tracking
    store at ``uri`` (``sqlite:///mlflow.db``, a folder, a server), with their ``epochs`` rows as
    metric histories (None: final metrics only, as from an export file, which has no epochs)."""
    if runs.duplicated(["sweep", "run_id"]).any():
        raise ParamError("{format=mlflow} writes each run's latest attempt as one MLflow run: "
                         "every attempt ({history}) has no place there")
    try:  # before _quiet: importing mlflow sets its loggers' levels
        import mlflow  # noqa: F401  (the package itself: its submodules may be loaded already)
    except ImportError:
        raise OptionError("format", "mlflow", f"needs the mlflow client {_EXTRA}") from None
    if runs.empty:  # nothing to write: the store is not even opened (a sqlite:/// one would be created)
        return MlflowExport(uri, 0, 0, 0, ())
    with _quiet(), _file_store_allowed(uri):
        try:
            return _export(runs, epochs, uri)
        except ImportError as exc:  # a sqlite:/// store without sqlalchemy/alembic
            raise OptionError("output", uri, f"the store needs {exc.name} {_EXTRA}") from None
        except _store_errors() as exc:
            raise OptionError("output", uri, f"not a usable MLflow tracking store: {_first_line(exc)}") from None


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a tracking store that cannot be opened or written raises: mlflow's own error, the
    file system's, and the database layer's (sqlalchemy, when installed: a folder store needs none)."""
    from mlflow.exceptions import MlflowException

    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:
        return MlflowException, OSError
    return MlflowException, OSError, SQLAlchemyError


def _export(runs: pd.DataFrame, epochs: pd.DataFrame | None, uri: str) -> MlflowExport:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    by_row = dict(iter(epochs.groupby("row_id"))) if epochs is not None and not epochs.empty else {}
    added = skipped = running = 0
    sweeps = list(pd.unique(runs["sweep"]))
    for sweep in sweeps:
        experiment = _experiment(client, sweep, uri)
        done = _exported(client, experiment)
        for row in runs[runs["sweep"] == sweep].to_dict("records"):
            if row["status"] not in RUN_STATUS:
                running += 1
            elif row["run_id"] in done:
                skipped += 1
            else:
                _write_run(client, experiment, row, by_row.get(row.get("row_id")))
                added += 1
    return MlflowExport(uri, added, skipped, running, tuple(sweeps))


def _experiment(client: Any, sweep: str, uri: str) -> str:
    """The id of the sweep's experiment, created when the store has none by that name."""
    found = client.get_experiment_by_name(sweep)
    if found is None:
        return client.create_experiment(sweep)
    if found.lifecycle_stage == "deleted":
        raise OptionError("output", uri, f"its experiment {sweep!r} is deleted: restore it, or remove it "
                                         "for good (mlflow gc), before exporting the sweep again")
    return found.experiment_id


def _exported(client: Any, experiment: str) -> set[str]:
    """The run ids the experiment holds complete; an MLflow run this export left ``RUNNING``
    (it died before the run was terminated) is deleted, to be written anew."""
    done, token = set(), None
    while True:
        page = client.search_runs([experiment], max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get(KEY)
            if key is None:
                continue
            if run.info.status == "RUNNING":
                client.delete_run(run.info.run_id)
            else:
                done.add(key)
        token = page.token
        if not token:
            return done


def _write_run(client: Any, experiment: str, row: dict[str, Any], curve: pd.DataFrame | None) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

    stamp = _millis(row.get("finished_at")) or _millis(row.get("claimed_at")) or 0
    params = [Param(column, _text(row[column], kind)[:MAX_PARAM_VAL_LENGTH])
              for column, kind in SETTING_COLUMNS.items() if _present(row.get(column))]
    tagged = ["sweep", "status", "row_id", *(c for c in RESULT_COLUMNS if c not in FINAL_METRICS), TAGS_COLUMN]
    tags = [RunTag(TAG_PREFIX + column, _text(row[column], RUN_COLUMNS.get(column, "TEXT"))[:MAX_TAG_VAL_LENGTH])
            for column in tagged if _present(row.get(column))]
    metrics = [Metric(column, float(row[column]), stamp, 0) for column in FINAL_METRICS if _present(row.get(column))]
    for epoch in ([] if curve is None else curve.to_dict("records")):
        metrics += [Metric(name, float(epoch[column]), stamp, int(epoch["epoch"]))
                    for column, name in EPOCH_METRICS.items() if _present(epoch.get(column))]
    run = client.create_run(experiment, start_time=_millis(row.get("claimed_at")), tags={KEY: row["run_id"]},
                            run_name=row["run_id"])
    _log(client, run.info.run_id, params, tags, metrics)
    client.set_terminated(run.info.run_id, RUN_STATUS[row["status"]], end_time=_millis(row.get("finished_at")))


def _log(client: Any, run: str, params: list, tags: list, metrics: list) -> None:
    """``log_batch`` within MLflow's limits: 100 params and 100 tags, 1000 entries in all, a call."""
    while params or tags or metrics:
        some_params, params = params[:100], params[100:]
        some_tags, tags = tags[:100], tags[100:]
        room = 1000 - len(some_params) - len(some_tags)
        some_metrics, metrics = metrics[:room], metrics[room:]
        client.log_batch(run, metrics=some_metrics, params=some_params, tags=some_tags)


def _present(value: Any) -> bool:
    """A stored value (NULL reads as None or NaN: a setting that does not apply, a result not measured)."""
    return value is not None and not (isinstance(value, float) and value != value)


def _text(value: Any, kind: str) -> str:
    """A stored value as MLflow text: integers without ``.0`` (a column with gaps reads as
    floats), floats as their shortest round-trip repr, so ``float(param)`` is the stored value."""
    if kind == "INTEGER":
        return str(int(value))
    if kind == "REAL":
        return repr(float(value))
    return str(value)


def _millis(stamp: Any) -> int | None:
    """An ISO time the store wrote, as MLflow's milliseconds since the epoch."""
    if not isinstance(stamp, str) or not stamp:
        return None
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def _first_line(exc: BaseException) -> str:
    """The message's first line, without the documentation link mlflow appends."""
    text = str(exc).strip().splitlines()
    return text[0].split(" See http")[0] if text else type(exc).__name__


@contextmanager
def _quiet() -> Iterator[None]:
    """mlflow and alembic log INFO lines (creating tables, migrations) and warn: not on the
    terminal of an export, which says in one line what it did."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="mlflow")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """A folder is MLflow's file store, which MLflow 3 refuses unless ``MLFLOW_ALLOW_FILE_STORE``
    is set: naming a folder is that choice, so the export sets it while it writes."""
    if urlparse(uri).scheme not in ("", "file"):
        yield
        return
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before
