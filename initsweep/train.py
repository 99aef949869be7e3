"""Train one run: ``run(RunSpec, device) -> RunResult``. Pure: no printing, no store access.

The executor hands the result to the process that owns the store; that is what lets the
same function run in-process, in a worker pool or as a Ray task.

Reproducibility: the seed is split (``numpy.random.SeedSequence``) into one stream for the
initial weights and one for the data order. Weights are drawn on the CPU and then moved,
so a spec starts from the same weights on every device; on the CPU the same spec gives
the same metrics bit for bit on every rerun.

Divergence: a NaN/inf training loss, or one above ``train.diverge_factor`` (1000 by
default) times the run's first-step loss, stops the run with status ``diverged`` and the
1-based optimizer step whose loss was bad. The bound is relative because a bad init can
*start* enormous and still train: N(0, 1) weights in the tutorial CNN with ReLU start at
a loss of 1e5-3e5 (seeds 0-2) and reach 50% test accuracy in 3 epochs with Adam; an
exploding start is the probe's verdict, not a divergence. The run is then
evaluated as it stands: a diverged run is a result, not an error. On the CPU the loss is
checked before every update; on an accelerator it is checked every ``_SYNC_EVERY_ACCEL``
steps (a host sync per step would stall the device), and the first bad step is still
found exactly from the losses kept on the device.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .build import build_initialized_model, seed_streams
from .config import RunSpec
from .data import DataSource, Splits, iterate_batches, load_splits, resolve_source
from .errors import OptionError
from .probe import probe_for_run

EVAL_BATCH = 2048  # evaluation has no backward pass: on an accelerator, large batches are fastest
# on the CPU cache-sized ones are: 1,000 test images through the tutorial CNN (channels_last,
# one thread) took 0.135 s in batches of 256 against 0.279 s in one batch
EVAL_BATCH_CPU = 256
_SYNC_EVERY_ACCEL = 32

Progress = Callable[[int, int, int], None]  # (epoch, step within epoch, steps per epoch)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    seconds: float


@dataclass
class RunResult:
    run_id: str
    status: str  # ok | diverged | failed | interrupted
    error: str | None = None
    diverged_step: int | None = None
    steps: int = 0
    epochs: list[EpochRecord] = field(default_factory=list)
    test_loss: float | None = None
    test_acc: float | None = None
    best_val_acc: float | None = None
    final_train_loss: float | None = None
    final_train_acc: float | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    setup_seconds: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    wall_seconds: float | None = None
    samples_per_sec: float | None = None
    device: str | None = None
    data_source: str | None = None
    data_location: str | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    memory_format: str | None = None
    compiled: bool = False
    batched: bool = False  # trained inside a vmapped group (see batched.py)
    compile_seconds: float | None = None  # torch.compile warm-up, excluded from train_seconds
    peak_rss_mb: float | None = None  # the training process's peak resident memory
    verdict: str | None = None  # the probe's diagnosis at init (probe.py); None when diagnostics are off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str, param: str = "device") -> torch.device:
    """``auto`` takes CUDA when present, then MPS, else the CPU; explicit names are checked.

    A bad name is an ``OptionError`` naming ``param``, the setting it came from (``device``,
    or ``devices`` for one entry of a list), so the CLI names the flag the user typed.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionError(param, name, "not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(param, name, f"CUDA is not available on this machine "
                                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(param, name, f"only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise OptionError(param, name, "MPS is not available on this machine")
    elif device.type != "cpu":
        raise OptionError(param, name, "unsupported device type (use auto, cpu, cuda, cuda:N or mps)")
    return device


@lru_cache(maxsize=8)
def _source_for(dataset: str, root: str | None, download: bool) -> DataSource:
    """The data a spec names, found (or downloaded) without substitution.

    The sweep driver already resolved the fallback before expanding the grid, so a spec
    names the dataset actually used; here a missing dataset is an error, never a silent
    swap that would make the run id lie.
    """
    from types import SimpleNamespace

    return resolve_source(SimpleNamespace(dataset=dataset, root=root, download=download, fallback="none"))


def splits_for(spec: RunSpec, device: torch.device, source: DataSource | None = None) -> tuple[DataSource, Splits]:
    d = spec.data
    source = source or _source_for(d.dataset, d.root, d.download)
    splits = load_splits(source, val_fraction=d.val_fraction, split_seed=d.split_seed,
                         train_limit=d.train_limit, test_limit=d.test_limit, device=device)
    return source, splits


def make_optimizer(spec: RunSpec, params) -> torch.optim.Optimizer:
    t = spec.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                               weight_decay=t.weight_decay)
    raise ValueError(f"unknown optimizer {t.optimizer!r}")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode, in batches sized for
    the device (``EVAL_BATCH``/``EVAL_BATCH_CPU``)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        batch = EVAL_BATCH_CPU if x.device.type == "cpu" else EVAL_BATCH
        for xb, yb in iterate_batches(x, y, batch, shuffle=False):
            logits = model(xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    return loss_sum.item() / len(x), correct.item() / len(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment() -> dict[str, Any]:
    return {"initsweep": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "host": socket.gethostname(), "threads": torch.get_num_threads(), "worker": str(os.getpid())}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def memory_format_for(spec: RunSpec, device: torch.device) -> torch.memory_format:
    """channels_last for conv nets on the CPU: measured here 1.36x faster for the tutorial CNN
    (3,256 vs 2,399 samples/s, 2 threads). One-channel MNIST input is already laid out that
    way, so only the model moves. Elsewhere unmeasured, so left as PyTorch's default."""
    if device.type == "cpu" and spec.model.arch in ("plain", "tutorial"):
        return torch.channels_last
    return torch.contiguous_format


def autocast_for(spec: RunSpec, device: torch.device):
    """bf16 autocast for ``precision: bf16`` (CUDA only, checked when the sweep starts)."""
    if spec.train.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run(spec: RunSpec, device: torch.device | str = "cpu", *, source: DataSource | None = None,
        progress: Progress | None = None, compile: bool = False) -> RunResult:
    """Train and evaluate one run. Exceptions propagate (see :func:`run_safely`).

    ``compile`` wraps the model in ``torch.compile``; the first step (where compilation
    happens) is timed separately as ``compile_seconds`` and left out of ``train_seconds``.
    """
    device = torch.device(device)
    t_start = time.perf_counter()
    source, splits = splits_for(spec, device, source)
    init_seed, data_seed = seed_streams(spec.seed)
    memory_format = memory_format_for(spec, device)
    model = build_initialized_model(spec, torch.Generator().manual_seed(init_seed))
    model = model.to(device=device, memory_format=memory_format)
    optimizer = make_optimizer(spec, model.parameters())
    data_gen = torch.Generator().manual_seed(data_seed)
    result = RunResult(spec.run_id, "ok", n_train=splits.n_train, n_val=splits.n_val, n_test=splits.n_test,
                       device=str(device), data_source=source.dataset, data_location=source.location,
                       environment=environment(), memory_format=str(memory_format).rsplit(".", 1)[-1],
                       compiled=compile)
    # per-layer diagnostics before training: one fixed batch, no RNG, model state restored
    probed = probe_for_run(model, spec, splits.train_x, splits.train_y, "init")
    if probed is not None:
        result.layers += probed.rows("init")
        result.verdict = probed.verdict
    forward = torch.compile(model) if compile else model
    autocast = autocast_for(spec, device)
    _sync(device)
    result.setup_seconds = time.perf_counter() - t_start

    t = spec.train
    sync_every = 1 if device.type == "cpu" else _SYNC_EVERY_ACCEL
    steps_per_epoch = math.ceil(splits.n_train / t.batch_size)
    train_seconds = eval_seconds = 0.0
    samples = 0
    best_val = None
    first_loss: torch.Tensor | None = None  # divergence is judged relative to it
    for epoch in range(1, t.epochs + 1):
        _sync(device)
        t_epoch = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        pending: list[torch.Tensor] = []  # losses not yet checked on the host
        for i, (xb, yb) in enumerate(iterate_batches(splits.train_x, splits.train_y, t.batch_size,
                                                     generator=data_gen), start=1):
            if compile and result.steps == 0:
                t_compile = time.perf_counter()
            with autocast:
                logits = forward(xb)
            loss = F.cross_entropy(logits.float(), yb)
            pending.append(loss.detach())
            if first_loss is None:
                first_loss = pending[0]
            if len(pending) >= sync_every:
                bad = _first_bad(pending, t.diverge_factor * first_loss)
                if bad is not None:
                    result.status, result.diverged_step = "diverged", result.steps - len(pending) + 1 + bad + 1
                    break
                pending.clear()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if compile and result.steps == 0:
                _sync(device)
                result.compile_seconds = time.perf_counter() - t_compile
            result.steps += 1
            loss_sum += loss.detach().double() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
            if progress is not None:
                progress(epoch, i, steps_per_epoch)
            if t.max_steps is not None and result.steps >= t.max_steps:
                break
        if result.status == "ok" and pending:
            bad = _first_bad(pending, t.diverge_factor * first_loss)
            if bad is not None:
                result.status, result.diverged_step = "diverged", result.steps - len(pending) + bad + 1
        _sync(device)
        epoch_train = time.perf_counter() - t_epoch - (result.compile_seconds or 0.0) * (epoch == 1)
        train_seconds += epoch_train
        samples += seen
        t_eval = time.perf_counter()
        val_loss, val_acc = evaluate(model, splits.val_x, splits.val_y) if splits.n_val else (None, None)
        eval_seconds += time.perf_counter() - t_eval
        if val_acc is not None and math.isfinite(val_acc):
            best_val = val_acc if best_val is None else max(best_val, val_acc)
        train_loss = loss_sum.item() / seen if seen else float("nan")
        train_acc = correct.item() / seen if seen else float("nan")
        result.epochs.append(EpochRecord(epoch, train_loss, train_acc, val_loss, val_acc,
                                         time.perf_counter() - t_epoch))
        result.final_train_loss, result.final_train_acc = train_loss, train_acc
        if result.status != "ok" or (t.max_steps is not None and result.steps >= t.max_steps):
            break

    probed = probe_for_run(model, spec, splits.train_x, splits.train_y, "final")
    if probed is not None:
        result.layers += probed.rows("final")
    t_eval = time.perf_counter()
    result.test_loss, result.test_acc = evaluate(model, splits.test_x, splits.test_y)
    eval_seconds += time.perf_counter() - t_eval
    result.best_val_acc = best_val
    result.train_seconds, result.eval_seconds = train_seconds, eval_seconds
    result.samples_per_sec = samples / train_seconds if train_seconds > 0 else None
    result.wall_seconds = time.perf_counter() - t_start
    result.peak_rss_mb = peak_rss_mb()
    return result


def _first_bad(losses: list[torch.Tensor], bound: torch.Tensor) -> int | None:
    """Index of the first loss that is NaN/inf or above ``bound`` (one host sync for all)."""
    values = torch.stack(losses)
    bad = ~torch.isfinite(values) | (values > bound)
    if not bool(bad.any()):
        return None
    return int(bad.nonzero()[0, 0])


def run_safely(spec: RunSpec, device: torch.device | str = "cpu", **kwargs: Any) -> RunResult:
    """:func:`run`, with any exception recorded as a ``failed`` result (Ctrl-C still propagates)."""
    t_start = time.perf_counter()
    try:
        return run(spec, device, **kwargs)
    except Exception as exc:  # noqa: BLE001 — one broken run must not end the sweep
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
        return RunResult(spec.run_id, "failed", error=f"{type(exc).__name__}: {exc}{at}",
                         device=str(device), wall_seconds=time.perf_counter() - t_start,
                         environment=environment())
