"""The results store's columns: the one definition of a run's settings and results.

Each table maps a column name to its SQLite type, in table order; where a value comes
from is said beside each table. The SQLite schema and its migration (``results/store.py``),
``RunSpec.settings()`` (``config.py``), ``RunResult.to_row()`` (``train.py``), the
probe's per-layer rows (``probe.py``), the report's setting columns (``report/stats.py``) and
the export's column types (``results/read.py``) all derive from these tables, so a new setting
or result is one entry here (plus its field in the config or ``RunResult``);
``tests/test_columns.py`` checks the tables against the config's fields and
``RunResult``'s, so a field without its column fails there.

A module of its own, importing nothing: ``report``/``export``/``show`` read it without
loading torch (the config's registries), training workers without loading pandas (the store).
A column added here reaches an existing store through ``Store._migrate`` (``ALTER TABLE
... ADD COLUMN``, NULL in older rows); bump ``store.SCHEMA_VERSION`` with it.
"""

from __future__ import annotations

# runs: a run's resolved settings, written when it is claimed; values from
# ``RunSpec.settings()``. ``seed`` is the spec's seed; every other column is the config
# field of that name (in ``data``, ``model`` or ``train``); a registry choice (``init``,
# ``activation``, ``bias``) is three columns: its name, ``<choice>_params`` (JSON) and
# ``<choice>_label`` (``leaky_relu(negative_slope=0.2)``, what reports group by).
SETTING_COLUMNS: dict[str, str] = {
    "seed": "INTEGER", "init": "TEXT", "init_params": "TEXT", "init_label": "TEXT", "activation": "TEXT",
    "activation_params": "TEXT", "activation_label": "TEXT", "bias": "TEXT", "bias_params": "TEXT",
    "bias_label": "TEXT", "arch": "TEXT",
    "depth": "INTEGER", "width": "INTEGER", "norm": "TEXT", "padding": "TEXT", "head": "TEXT", "dataset": "TEXT",
    "val_fraction": "REAL", "split_seed": "INTEGER", "train_limit": "INTEGER", "test_limit": "INTEGER",
    "optimizer": "TEXT", "lr": "REAL", "momentum": "REAL", "nesterov": "INTEGER",
    "weight_decay": "REAL", "batch_size": "INTEGER", "epochs": "INTEGER", "max_steps": "INTEGER",
    "diverge_factor": "REAL", "precision": "TEXT",
}

# runs: what an attempt used and measured; values from ``RunResult.to_row()`` at finish
# (its scalar fields by name, the last epoch's ``final_val_*``, the environment through
# ENVIRONMENT_COLUMNS), except STORE_COLUMNS, which the store writes itself.
RESULT_COLUMNS: dict[str, str] = {
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
    # provenance: the code (git, read once per sweep at claim) and the machine that trained
    "git_commit": "TEXT", "git_dirty": "INTEGER", "cpu_model": "TEXT", "gpu_name": "TEXT",
    "cuda_version": "TEXT", "cudnn_version": "TEXT", "torchvision_version": "TEXT", "numpy_version": "TEXT",
    # a run's Python warnings (one per line) and, for a failed run, its full traceback
    "warnings": "TEXT", "traceback": "TEXT",
    # the saved weights (``train.save``), relative to the results folder, and their epoch
    "checkpoint": "TEXT", "checkpoint_epoch": "INTEGER",
}

# Of RESULT_COLUMNS, those ``Store.claim`` (the data the plan asked for and got, who claimed
# the run and when, the git checkout the sweep was started from) and ``Store.finish`` (when) write rather than the result. ``host`` is
# both: the claiming process's host, then the training worker's from the result.
STORE_COLUMNS = ("dataset_requested", "data_fallback", "owner", "claimed_at", "finished_at", "git_commit",
                 "git_dirty")

# ``RunResult.environment`` key (``train.environment()``) -> its RESULT_COLUMNS column.
ENVIRONMENT_COLUMNS = {"initsweep": "initsweep_version", "torch": "torch_version", "python": "python_version",
                       "host": "host", "worker": "worker", "threads": "threads", "cpu_model": "cpu_model",
                       "gpu_name": "gpu_name", "cuda": "cuda_version", "cudnn": "cudnn_version",
                       "torchvision": "torchvision_version", "numpy": "numpy_version"}

# Every column of ``runs``, in table order: its key and status, the settings, the results
# and the spec as JSON (``RunSpec.to_json()``), which ``Store.claim`` writes.
RUN_COLUMNS: dict[str, str] = {"row_id": "INTEGER", "run_id": "TEXT", "sweep": "TEXT", "status": "TEXT",
                               **SETTING_COLUMNS, **RESULT_COLUMNS, "spec_json": "TEXT"}

# layers: one row per block and phase (``init``/``final``), keyed by (row_id, phase, layer);
# values from the probe's per-layer rows (``probe.probe_model``, whose keys are these
# columns). The ``predicted_*`` columns are the mean-field prediction, made at init only.
LAYER_COLUMNS: dict[str, str] = {
    "kind": "TEXT", "fan_in": "INTEGER", "pre_mean": "REAL", "pre_std": "REAL", "act_mean": "REAL",
    "act_std": "REAL", "act_grad_std": "REAL", "weight_grad_std": "REAL", "weight_std": "REAL",
    "dead_frac": "REAL", "saturated_frac": "REAL", "predicted_act_var": "REAL",
    "pre_m2": "REAL", "act_m2": "REAL", "act_grad_norm2": "REAL", "sigma_w2": "REAL",
    "predicted_pre_m2": "REAL", "predicted_act_m2": "REAL", "predicted_act_grad_norm2": "REAL",
}
