"""Where a sweep also logs each finished run: ``log_to: [tensorboard]`` / ``run --log-to``.

A logger is called by the :class:`~initsweep.sweep.ledger.Ledger` with each run's spec and
result right after the store has committed it, in the process that owns the store, so
the in-process executor, the worker pool and Ray all log the same way and each run's
folder has one writer. A logger reads only the ``RunResult`` (what was just stored) and
writes outside the store.

TensorBoard: one event folder per run, ``<results>/tensorboard/<sweep>/<run_id>/``
(``tensorboard --logdir results/tensorboard``):

* ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` at each epoch (step = epoch);
* ``train/step_loss`` at every ``log_every_steps``-th optimizer step, when the config sets
  it (step = the optimizer step; ``RunResult.step_losses``);
* ``test/loss``, ``test/acc`` at the last epoch;
* ``layers/{init,final}/act_std`` and ``layers/{init,final}/act_grad_norm`` (the per-example
  gradient norm ``sqrt(act_grad_norm2)``, see ``probe.py``) with step = the layer index:
  a curve over depth, before and after training;
* the run's settings (the ``runs`` columns of ``RunSpec.settings()``) and its status as
  hparams: a session per run for the HParams tab. Only the session is written, no
  experiment summary: TensorBoard then builds the experiment from every run's session,
  where one run's summary would decide the columns for all.

A rerun of a run (``--fresh``, or a failed run retried) replaces its event files, so a
folder holds one attempt: the latest, as in every report. Step losses are the one thing
logged that the store does not keep.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from ..config import RunSpec, check_logger
from ..errors import InitsweepError, OptionError
from ..jsontext import json_text
from ..train import RunResult

Logger = Callable[[RunSpec, RunResult], None]
EXTRA = "pip install 'initsweep[tensorboard]'"


def open_loggers(names: list[str], results_dir: str | Path, sweep: str) -> list[Logger]:
    """The loggers of ``names`` (the config's ``log_to`` and the caller's), each once.

    Checked before a sweep starts, so that an unknown name or a missing package is refused
    before anything is trained or a results folder is made.
    """
    loggers = []
    for name in dict.fromkeys(names):
        try:
            check_logger(name)
        except ValueError as exc:
            raise OptionError("log_to", name, str(exc), repeat_value=False) from None
        loggers.append(TensorBoardLog(Path(results_dir) / "tensorboard" / sweep))  # the one of LOGGERS
    return loggers


class TensorBoardLog:
    """Writes each finished run's TensorBoard event folder under ``folder/<run_id>``."""

    def __init__(self, folder: Path):
        try:  # the extra; torch.utils.tensorboard raises ImportError without it
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            raise InitsweepError(f"logging to tensorboard needs TensorBoard, which is not installed: {EXTRA}") from None
        self.folder, self._writer, self._hparams = folder, SummaryWriter, hparams

    def __call__(self, spec: RunSpec, result: RunResult) -> None:
        folder = self.folder / spec.run_id
        try:
            for old in folder.glob("events.out.tfevents.*"):  # an earlier attempt's
                old.unlink()
            writer = self._writer(log_dir=str(folder))
            try:
                for tag, value, step in scalars(result):
                    writer.add_scalar(tag, value, step)
                # the session alone (see the module's docstring): start, then end
                _, start, end = self._hparams(run_hparams(spec, result), {})
                writer.file_writer.add_summary(start)
                writer.file_writer.add_summary(end)
            finally:
                writer.close()
        except OSError as exc:
            raise InitsweepError(f"{folder}: cannot write TensorBoard events: {exc.strerror or exc}") from None


def scalars(result: RunResult) -> list[tuple[str, float, int]]:
    """``(tag, value, step)`` of every scalar a run logs; a missing value (no validation
    split, no test metrics of a failed run, diagnostics off) is left out."""
    out = []
    for e in result.epochs:
        out += [("train/loss", e.train_loss, e.epoch), ("train/acc", e.train_acc, e.epoch),
                ("val/loss", e.val_loss, e.epoch), ("val/acc", e.val_acc, e.epoch)]
    out += [("train/step_loss", loss, step) for step, loss in result.step_losses]
    last = result.epochs[-1].epoch if result.epochs else 0
    out += [("test/loss", result.test_loss, last), ("test/acc", result.test_acc, last)]
    for row in result.layers:
        norm2 = row.get("act_grad_norm2")
        out += [(f"layers/{row['phase']}/act_std", row.get("act_std"), row["layer"]),
                (f"layers/{row['phase']}/act_grad_norm", None if norm2 is None else math.sqrt(norm2), row["layer"])]
    return [(tag, float(value), step) for tag, value, step in out if value is not None]


def run_hparams(spec: RunSpec, result: RunResult) -> dict[str, Any]:
    """The run's settings as HParams values (numbers and strings; a choice's parameters as
    JSON text; an unset one, like ``max_steps: null``, left out) and its status."""
    settings = {k: v for k, v in spec.settings().items() if k not in ("run_id", "sweep") and v is not None}
    values = {k: json_text(v, indent=None).strip() if isinstance(v, dict) else v for k, v in settings.items()}
    return {**values, "status": result.status}
