"""Saved weights (``train.save: final`` or ``best``): ``<results>/checkpoints/<run_id>.pt``.

A checkpoint is the trained model's ``state_dict`` (CPU tensors, ``torch.save``), loadable
into the model its ``RunSpec`` builds::

    spec = run_spec("results", "379a6f09")          # the stored run's RunSpec
    model = build_initialized_model(spec, torch.Generator())
    model.load_state_dict(torch.load(checkpoint_path("results", spec.run_id)))

The sweep's ledger writes it (:func:`write_checkpoint`) in the process that owns the results
folder, from the weights the run's result carries back. One file per run id: the run id
leaves out the sweep name, so the same run in two sweeps of one folder (the same experiment)
shares its file, and a rerun (``--fresh``) replaces it. Its own module: it imports torch,
which ``results.store`` and the readers do not need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..build import build_initialized_model
from ..config import RunSpec, expand, validate
from ..errors import StoreError
from .read import find_run

CHECKPOINTS = "checkpoints"  # the folder under the results folder


def checkpoint_path(results_dir: str | Path, run_id: str) -> Path:
    """Where a run's weights are saved in a results folder."""
    return Path(results_dir) / CHECKPOINTS / f"{run_id}.pt"


def write_checkpoint(results_dir: str | Path, run_id: str, weights: dict[str, torch.Tensor]) -> str:
    """Save ``weights`` as the run's checkpoint, atomically (a killed sweep leaves the old
    file or the new one, never half of one); its path relative to the results folder, as
    the ``checkpoint`` column records it."""
    path = checkpoint_path(results_dir, run_id)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(weights, part)
        os.replace(part, path)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise StoreError(f"cannot save the weights of run {run_id} to {path}: {exc.strerror or exc}") from None
    return path.relative_to(results_dir).as_posix()


def run_spec(results: str | Path, run_id: str, sweep: str | None = None) -> RunSpec:
    """The ``RunSpec`` of a stored run (``run_id``: the id or a unique prefix of it), rebuilt
    from the spec the store keeps with it; its ``run_id`` is the stored one."""
    stored = find_run(results, run_id, sweep)["run"]
    spec_json = json.loads(stored["spec_json"])
    spec_json.pop("v", None)
    cfg = validate({"name": spec_json["sweep"], "data": spec_json["data"], "model": spec_json["model"],
                    "train": {**spec_json["train"], "seeds": [spec_json["seed"]]},
                    "diagnostics": {"enabled": False}})
    (spec,) = expand(cfg).runs
    if spec.run_id != stored["run_id"]:
        raise StoreError(f"run {stored['run_id']} was stored by another initsweep (its spec now hashes to "
                         f"{spec.run_id}); load its checkpoint with that version")
    return spec


def load_model(results: str | Path, run_id: str, sweep: str | None = None) -> nn.Module:
    """The model a stored run trained, with its saved weights (on the CPU, in eval mode)."""
    spec = run_spec(results, run_id, sweep)
    path = checkpoint_path(results, spec.run_id)
    if not path.is_file():
        raise StoreError(f"run {spec.run_id} has no checkpoint ({path}); train it with train.save: final or best")
    model = build_initialized_model(spec, torch.Generator())
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()
