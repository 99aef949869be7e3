"""Train a group of runs that share an architecture as one batched model (``torch.func``).

On a GPU a single small CNN leaves most of the device idle; stacking K copies of it with
``stack_module_state`` and running them through ``vmap(functional_call(...))`` turns K
small kernels into one large one. Each model still trains exactly as if alone:

* its own initial weights (its own seed, drawn on the CPU as in ``train.run``) and its
  own data order (its own permutation of the training set every epoch);
* one optimizer over the stacked parameters: Adam, AdamW and SGD update every element
  from that element's own gradient history, and the summed loss gives each model the
  gradient of its own loss, so model k's trajectory does not depend on the others;
* a model whose loss diverges is masked out of the summed loss and its weights are frozen
  where they stood (the same stop rule and step numbering as ``train.run``), without
  touching the others.

Results agree with ``train.run`` to float tolerance, not bit for bit: batched convolutions
use other kernels (tests check allclose on the CPU). Measured on this 2-core CPU, vmapping
is slower than plain runs, so it is used automatically only on CUDA (``--vmap auto``).

A group shares everything but the init, the bias init and the seed (see
:func:`group_key`); models with normalization layers are not grouped (their running
statistics would need per-model buffers updated in place under ``vmap``).
"""

from __future__ import annotations

import copy
import json
import math
import time
import traceback
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from .config import RunSpec
from .data import DataSource
from .probe import probe_for_run
from .build import build_initialized_model, seed_streams
from .train import (
    EVAL_BATCH, EpochRecord, RunResult, _SYNC_EVERY_ACCEL, _sync, autocast_for,
    environment, iterate_batches, make_optimizer, peak_rss_mb, run_safely, splits_for,
)

MAX_GROUP = 64
GroupProgress = Callable[[RunSpec, int, int, int], None]  # (spec, epoch, step, steps per epoch)


def group_key(spec: RunSpec) -> str | None:
    """Runs with the same key can be trained together; ``None`` means never batch this run."""
    if spec.model.norm != "none":
        return None
    identity = spec.identity()
    model = dict(identity["model"])
    for varying in ("init", "bias"):
        model.pop(varying)
    return json.dumps({**identity, "model": model, "seed": None}, sort_keys=True)


def group_specs(specs: list[RunSpec], max_group: int = MAX_GROUP) -> list[list[RunSpec]]:
    """Partition runs into batchable groups (in order of first appearance), at most ``max_group`` each."""
    groups: dict[str, list[list[RunSpec]]] = {}
    order: list[list[RunSpec]] = []
    for spec in specs:
        key = group_key(spec)
        chunks = groups.setdefault(key, []) if key is not None else None
        if chunks is None or not chunks or len(chunks[-1]) >= max_group:
            chunk: list[RunSpec] = []
            order.append(chunk)
            if chunks is not None:
                chunks.append(chunk)
        else:
            chunk = chunks[-1]
        chunk.append(spec)
    return order


def run_group(specs: list[RunSpec], device: torch.device | str = "cpu", *, source: DataSource | None = None,
              progress: GroupProgress | None = None) -> list[RunResult]:
    """Train ``specs`` (one :func:`group_key`) together; an exception fails every run of the group."""
    if len(specs) == 1:
        return [run_safely(specs[0], device, source=source,
                           progress=None if progress is None else lambda e, s, n: progress(specs[0], e, s, n))]
    keys = {group_key(s) for s in specs}
    if len(keys) != 1 or None in keys:
        raise ValueError("run_group needs runs that share one group_key (see group_specs)")
    t_start = time.perf_counter()
    try:
        return _train_group(specs, torch.device(device), source, progress)
    except Exception as exc:  # noqa: BLE001 — like run_safely: a broken group must not end the sweep
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
        return [RunResult(s.run_id, "failed", error=f"{type(exc).__name__}: {exc}{at}", device=str(device),
                          wall_seconds=time.perf_counter() - t_start, environment=environment(), batched=True)
                for s in specs]


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [K] mask shaped to broadcast over a stacked [K, ...] tensor."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _train_group(specs: list[RunSpec], device: torch.device, source: DataSource | None,
                 progress: GroupProgress | None) -> list[RunResult]:
    t_start = time.perf_counter()
    spec0, k = specs[0], len(specs)
    t = spec0.train
    source, splits = splits_for(spec0, device, source)
    models, data_gens = [], []
    for spec in specs:
        init_seed, data_seed = seed_streams(spec.seed)
        models.append(build_initialized_model(spec, torch.Generator().manual_seed(init_seed)))
        data_gens.append(torch.Generator().manual_seed(data_seed))
    probes = [probe_for_run(m.to(device), s, splits.train_x, splits.train_y, "init") for m, s in zip(models, specs)]
    stacked, buffers = stack_module_state(models)  # each [K, *shape]
    params = {name: p.detach().to(device).requires_grad_() for name, p in stacked.items()}
    buffers = {name: b.to(device) for name, b in buffers.items()}
    base = copy.deepcopy(models[0]).to("meta")

    def forward(p, b, x):
        return functional_call(base, (p, b), (x,))

    per_model_batches = vmap(forward, in_dims=(0, 0, 0))  # x: [K, B, 1, 28, 28]
    shared_batch = vmap(forward, in_dims=(0, 0, None))  # x: [B, 1, 28, 28] for every model
    optimizer = make_optimizer(spec0, params.values())
    autocast = autocast_for(spec0, device)
    env = environment()
    results = [RunResult(s.run_id, "ok", n_train=splits.n_train, n_val=splits.n_val, n_test=splits.n_test,
                         device=str(device), data_source=source.dataset, data_location=source.location,
                         environment=env, memory_format="contiguous_format", batched=True) for s in specs]
    for result, probed in zip(results, probes):
        if probed is not None:
            result.layers += probed.rows("init")
            result.verdict = probed.verdict

    def evaluate_all(x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        if len(x) == 0:
            return [float("nan")] * k, [float("nan")] * k
        loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
        correct = torch.zeros(k, dtype=torch.int64, device=device)
        with torch.no_grad():
            for xb, yb in iterate_batches(x, y, max(256, EVAL_BATCH // k), shuffle=False):
                logits = shared_batch(params, buffers, xb)  # [K, b, 10]
                losses = F.cross_entropy(logits.float().flatten(0, 1), yb.repeat(k), reduction="none")
                loss_sum += losses.view(k, -1).sum(1).double()
                correct += (logits.argmax(-1) == yb).sum(1)
        return (loss_sum / len(x)).tolist(), (correct.double() / len(x)).tolist()

    _sync(device)
    setup = time.perf_counter() - t_start
    sync_every = 1 if device.type == "cpu" else _SYNC_EVERY_ACCEL
    steps_per_epoch = math.ceil(splits.n_train / t.batch_size)
    active = torch.ones(k, dtype=torch.bool, device=device)
    frozen: dict[str, torch.Tensor] | None = None  # weights of diverged models, where they stopped
    first_loss: torch.Tensor | None = None
    steps = 0
    train_seconds = eval_seconds = 0.0
    samples = torch.zeros(k, dtype=torch.int64)
    best_val: list[float | None] = [None] * k
    stopped = [False] * k  # diverged in an earlier epoch: no more epoch records

    def check(pending: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
        """Find each model's first bad step among ``pending`` (one host sync) and stop it."""
        nonlocal frozen
        losses = torch.stack([p[1] for p in pending])  # [S, K]
        was_active = torch.stack([p[2] for p in pending])  # [S, K]
        bad = (~torch.isfinite(losses) | (losses > t.diverge_factor * first_loss)) & was_active
        if not bool(bad.any()):
            return
        any_bad = bad.any(0).tolist()
        first = bad.int().argmax(0).tolist()
        with torch.no_grad():
            if frozen is None:
                frozen = {name: p.detach().clone() for name, p in params.items()}
            for model in (m for m in range(k) if any_bad[m]):
                results[model].status = "diverged"
                results[model].diverged_step = pending[first[model]][0]
                results[model].steps = pending[first[model]][0] - 1
                active[model] = False
                for name, p in params.items():
                    frozen[name][model] = p[model]

    for epoch in range(1, t.epochs + 1):
        _sync(device)
        t_epoch = time.perf_counter()
        epoch_active = active.clone()
        perms = torch.stack([torch.randperm(splits.n_train, generator=g) for g in data_gens]).to(device)
        loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
        correct = torch.zeros(k, dtype=torch.int64, device=device)
        seen = torch.zeros(k, dtype=torch.int64, device=device)
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for i, start in enumerate(range(0, splits.n_train, t.batch_size), start=1):
            idx = perms[:, start:start + t.batch_size]  # [K, b]
            xb, yb = splits.train_x[idx], splits.train_y[idx]  # [K, b, 1, 28, 28], [K, b]
            with autocast:
                logits = per_model_batches(params, buffers, xb)  # [K, b, 10]
            losses = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none").view(k, -1).mean(1)
            if first_loss is None:
                first_loss = losses.detach()
            pending.append((steps + 1, losses.detach(), active.clone()))
            if len(pending) >= sync_every:
                check(pending)
                pending.clear()
                if not bool(active.any()):
                    break
            optimizer.zero_grad(set_to_none=True)
            torch.where(active, losses, torch.zeros_like(losses)).sum().backward()
            optimizer.step()
            if frozen is not None:
                with torch.no_grad():
                    for name, p in params.items():
                        p.copy_(torch.where(_expand(active, p), p, frozen[name]))
            steps += 1
            loss_sum += torch.where(active, losses.detach().double() * len(yb[0]), 0.0)
            correct += torch.where(active, (logits.detach().argmax(-1) == yb).sum(1), 0)
            seen += torch.where(active, len(yb[0]), 0)
            if progress is not None:
                for model, spec in enumerate(specs):
                    if not stopped[model]:
                        progress(spec, epoch, i, steps_per_epoch)
            if t.max_steps is not None and steps >= t.max_steps:
                break
        if pending:
            check(pending)
        _sync(device)
        epoch_seconds = time.perf_counter() - t_epoch
        train_seconds += epoch_seconds
        t_eval = time.perf_counter()
        val_loss, val_acc = evaluate_all(splits.val_x, splits.val_y) if splits.n_val else ([None] * k, [None] * k)
        eval_seconds += time.perf_counter() - t_eval
        seen_l, loss_l, correct_l = seen.tolist(), loss_sum.tolist(), correct.tolist()
        for model, result in enumerate(results):
            if stopped[model] or not bool(epoch_active[model]):
                continue
            n = seen_l[model]
            train_loss = loss_l[model] / n if n else float("nan")
            train_acc = correct_l[model] / n if n else float("nan")
            result.epochs.append(EpochRecord(epoch, train_loss, train_acc, val_loss[model], val_acc[model],
                                             epoch_seconds))
            result.final_train_loss, result.final_train_acc = train_loss, train_acc
            samples[model] += n
            if val_acc[model] is not None and math.isfinite(val_acc[model]):
                best_val[model] = val_acc[model] if best_val[model] is None else max(best_val[model], val_acc[model])
            if result.status == "ok":
                result.steps = steps
        stopped = [not bool(a) for a in active.tolist()]
        if all(stopped) or (t.max_steps is not None and steps >= t.max_steps):
            break

    with torch.no_grad():  # each model's final weights back into its own module, for the probe
        for model, (module, spec) in enumerate(zip(models, specs)):
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                tensor.copy_((params.get(name) if name in params else buffers[name])[model])
            probed = probe_for_run(module, spec, splits.train_x, splits.train_y, "final")
            if probed is not None:
                results[model].layers += probed.rows("final")
    t_eval = time.perf_counter()
    test_loss, test_acc = evaluate_all(splits.test_x, splits.test_y)
    eval_seconds += time.perf_counter() - t_eval
    wall = time.perf_counter() - t_start
    peak = peak_rss_mb()
    for model, result in enumerate(results):
        result.test_loss, result.test_acc, result.best_val_acc = test_loss[model], test_acc[model], best_val[model]
        result.setup_seconds, result.train_seconds, result.eval_seconds = setup, train_seconds, eval_seconds
        result.samples_per_sec = int(samples[model]) / train_seconds if train_seconds > 0 else None
        result.wall_seconds, result.peak_rss_mb = wall, peak
    return results
