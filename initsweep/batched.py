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
  where they stood, without touching the others.

The loop is ``train.run``'s own (``train.fit``): :class:`Stacked` is the K-model
``train.Lockstep`` it drives, so the stop rule, step numbering and records are the same code.

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
import time
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .build import build_initialized_model, seed_streams
from .config import RunSpec
from .data import DataSource
from .probe import probe_for_run
from .train import (
    RunResult, autocast_for, environment, failed_result, fit, make_optimizer, recorded_warnings, run_safely, splits_for,
    sync,
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
    results: list[RunResult] = []
    with recorded_warnings(lambda: results):  # the group's warnings are each of its runs'
        try:
            results += _train_group(specs, torch.device(device), source, progress)
        except Exception as exc:  # noqa: BLE001 — like run_safely: a broken group must not end the sweep
            results += [failed_result(s.run_id, exc, device, t_start, batched=True) for s in specs]
    return results


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [K] mask shaped to broadcast over a stacked [K, ...] tensor."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


class Stacked:
    """K same-shaped modules as one vmapped model: a ``train.Lockstep`` of K.

    A stopped (diverged) model's weights are held where they stood: the optimizer still
    moves them (Adam's momentum, weight decay) although its loss is masked out, so every
    step puts them back.
    """

    def __init__(self, modules: list[nn.Module], device: torch.device, autocast):
        self.k, self.device, self.autocast, self._modules = len(modules), device, autocast, modules
        stacked, buffers = stack_module_state(modules)  # each [K, *shape]
        self.params = {name: p.detach().to(device).requires_grad_() for name, p in stacked.items()}
        self.buffers = {name: b.to(device) for name, b in buffers.items()}
        base = copy.deepcopy(modules[0]).to("meta")

        def forward(p, b, x):
            return functional_call(base, (p, b), (x,))

        self._per_model_batches = vmap(forward, in_dims=(0, 0, 0))  # x: [K, B, 1, 28, 28]
        self._shared_batch = vmap(forward, in_dims=(0, 0, None))  # x: [B, 1, 28, 28] for every model
        self._held: torch.Tensor | None = None  # [K] bool: models whose weights are frozen
        self._frozen: dict[str, torch.Tensor] | None = None  # their weights, where they stopped

    def train_logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self._per_model_batches(self.params, self.buffers, x)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        # no mode switch: grouped models have no normalization layers (group_key) and no dropout
        with self.autocast:
            return self._shared_batch(self.params, self.buffers, x)

    def stop(self, models: list[int]) -> None:
        with torch.no_grad():
            if self._frozen is None:
                self._frozen = {name: p.detach().clone() for name, p in self.params.items()}
                self._held = torch.zeros(self.k, dtype=torch.bool, device=self.device)
            for m in models:
                self._held[m] = True
                for name, p in self.params.items():
                    self._frozen[name][m] = p[m]

    def after_step(self) -> None:
        if self._frozen is None:
            return
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(torch.where(_expand(self._held, p), self._frozen[name], p))

    def modules(self) -> list[nn.Module]:
        with torch.no_grad():  # each model's current weights back into its own module
            for m, module in enumerate(self._modules):
                for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                    tensor.copy_((self.params[name] if name in self.params else self.buffers[name])[m])
        return self._modules


def _train_group(specs: list[RunSpec], device: torch.device, source: DataSource | None,
                 progress: GroupProgress | None) -> list[RunResult]:
    t_start = time.perf_counter()
    spec0 = specs[0]
    source, splits = splits_for(spec0, device, source)
    modules, data_gens = [], []
    for spec in specs:
        init_seed, data_seed = seed_streams(spec.seed)
        modules.append(build_initialized_model(spec, torch.Generator().manual_seed(init_seed)).to(device))
        data_gens.append(torch.Generator().manual_seed(data_seed))
    env = environment(device)
    results = [RunResult(s.run_id, "ok", n_train=splits.n_train, n_val=splits.n_val, n_test=splits.n_test,
                         device=str(device), data_source=source.dataset, data_location=source.location,
                         environment=env, memory_format="contiguous_format", batched=True) for s in specs]
    for module, spec, result in zip(modules, specs, results):
        probed = probe_for_run(module, spec, splits.train_x, splits.train_y, "init")
        if probed is not None:
            result.layers += probed.rows("init")
            result.verdict = probed.verdict
    model = Stacked(modules, device, autocast_for(spec0, device))
    optimizer = make_optimizer(spec0, model.params.values())
    batch_size = spec0.train.batch_size

    def train_batches():
        """Each model's own permutation of the training set: x [K, b, 1, 28, 28], y [K, b]."""
        perms = torch.stack([torch.randperm(splits.n_train, generator=g) for g in data_gens]).to(device)
        for start in range(0, splits.n_train, batch_size):
            idx = perms[:, start:start + batch_size]
            yield splits.train_x[idx], splits.train_y[idx]

    sync(device)
    setup = time.perf_counter() - t_start
    for result in results:
        result.setup_seconds = setup
    fit(model, optimizer, specs, splits, results, train_batches, t_start=t_start,
        progress=None if progress is None else lambda m, e, i, n: progress(specs[m], e, i, n))
    return results
