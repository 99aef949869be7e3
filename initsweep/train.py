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
found exactly from the losses kept on the device; ``steps`` counts the updates applied
when it was found.

One loop for one run and for a vmapped group (``batched.py``): :func:`fit` runs the
epochs, :func:`train_epoch` one pass, :func:`evaluate` one split, all over K models in
lockstep (:class:`Lockstep`). A single run is K = 1 (:class:`Single`), so divergence,
progress and the epoch records are written once.
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
import warnings as pywarnings
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .build import build_initialized_model, seed_streams
from .columns import ENVIRONMENT_COLUMNS
from .config import RunSpec
from .data import DataSource, Splits, iterate_batches, load_splits, resolve_source
from .errors import InitsweepError, OptionError
from .models import get_arch
from .probe import probe_for_run
from .provenance import BF16_CPU_FLAGS, accelerator, bf16_cpu_flags, cpu_model, cpuinfo_text, package_version

EVAL_BATCH = 2048  # evaluation has no backward pass: on an accelerator, large batches are fastest
# on the CPU cache-sized ones are: 1,000 test images through the tutorial CNN (channels_last,
# one thread) took 0.135 s in batches of 256 against 0.279 s in one batch
EVAL_BATCH_CPU = 256
_SYNC_EVERY_ACCEL = 32

Progress = Callable[[int, int, int], None]  # (epoch, step within epoch, steps per epoch)
ModelProgress = Callable[[int, int, int, int], None]  # (model index in the group, epoch, step, steps per epoch)


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
    # the predicted class and the true class of every test image, one byte each in the test
    # split's order (``predictions`` table): McNemar's test, per-class accuracy, confusion
    predicted: bytes | None = None
    targets: bytes | None = None
    # (step, training loss) every ``log_every_steps`` steps, for the sweep's loggers; not stored
    step_losses: list[tuple[int, float]] = field(default_factory=list)
    warnings: str | None = None  # the Python warnings raised while it ran, one per line
    traceback: str | None = None  # a failed run's full traceback (``error`` is its last line)
    # ``train.save``: the trained weights (a CPU ``state_dict``), which travel back with the
    # result so that the process owning the results folder writes them, wherever the run
    # trained (a Ray worker may be on another machine); the ledger then sets ``checkpoint``,
    # the file's path relative to the results folder
    weights: dict[str, torch.Tensor] | None = None
    checkpoint: str | None = None
    checkpoint_epoch: int | None = None  # the epoch whose weights were saved

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_row(self) -> dict[str, Any]:
        """This attempt as ``runs`` columns (``columns.RESULT_COLUMNS``), for ``Store.finish``.

        Derived, not listed: every field is the column of its name except those in
        ``_NOT_COLUMNS``; the last epoch gives ``final_val_*``, the environment its
        ``ENVIRONMENT_COLUMNS``. A new scalar field is a new column with no line here.
        """
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_COLUMNS}
        last = self.epochs[-1] if self.epochs else None
        row["final_val_loss"] = last.val_loss if last else None
        row["final_val_acc"] = last.val_acc if last else None
        env = self.environment or {}
        row.update({column: env.get(key) for key, column in ENVIRONMENT_COLUMNS.items()})
        return row


# RunResult fields that are no column of ``runs``: the key (set at claim), the tables of
# their own (epochs, layers, predictions), the environment (spread over ENVIRONMENT_COLUMNS),
# and the dataset trained on, which the run's ``dataset`` setting already records.
_NOT_COLUMNS = ("run_id", "epochs", "layers", "environment", "data_source", "predicted", "targets", "step_losses",
                "weights")


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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a ``perf_counter`` reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """The process and machine that train (``ENVIRONMENT_COLUMNS``): versions, host, threads,
    CPU model, and for a run on ``device`` a CUDA one's GPU name. Read where the run trains,
    since it describes that machine; a fact that cannot be read is ``None``."""
    device = None if device is None else torch.device(device)
    gpu = accelerator(device.type if device is not None else "cpu", device.index if device is not None else None)
    return {"initsweep": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "host": socket.gethostname(), "threads": torch.get_num_threads(), "worker": str(os.getpid()),
            "cpu_model": cpu_model(), "gpu_name": gpu["gpu_name"], "cuda": gpu["cuda"], "cudnn": gpu["cudnn"],
            "torchvision": package_version("torchvision"), "numpy": numpy.__version__}


@contextlib.contextmanager
def recorded_warnings(results: Callable[[], list["RunResult"]]) -> Iterator[None]:
    """Record the Python warnings raised inside the block into ``results()``' ``warnings``
    (``category: message (file:line)``, one line per distinct warning, in order; a message's
    own line breaks become spaces, so that a line is a warning).

    The filters in force stay as they are (an ignored warning stays ignored), but entering
    resets Python's once-per-location registry, so each run records its own warnings even
    when an earlier run in this process raised the same one. ``results`` is called after the
    block: the results exist only then.
    """
    with pywarnings.catch_warnings(record=True) as caught:
        yield
    lines = list(dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())} "
                               f"({w.filename.rsplit('/', 1)[-1]}:{w.lineno})" for w in caught))
    if lines:
        for result in results():
            result.warnings = "\n".join(lines)


def failed_result(run_id: str, exc: BaseException, device: torch.device | str, t_start: float,
                  **fields_: Any) -> RunResult:
    """A ``failed`` result for an exception: its one-line ``error`` (type, message and where it
    was raised) and its full ``traceback``."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return RunResult(run_id, "failed", error=f"{type(exc).__name__}: {exc}{at}",
                     traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                     device=str(device), wall_seconds=time.perf_counter() - t_start,
                     environment=environment(device), **fields_)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def memory_format_for(spec: RunSpec, device: torch.device) -> torch.memory_format:
    """channels_last for conv nets (archs that declare ``channels_last``) on the CPU: measured
    here 1.36x faster for the tutorial CNN (3,256 vs 2,399 samples/s, 2 threads). One-channel
    MNIST input is already laid out that way, so only the model moves. Elsewhere unmeasured,
    so left as PyTorch's default."""
    if device.type == "cpu" and get_arch(spec.model.arch).channels_last:
        return torch.channels_last
    return torch.contiguous_format


def check_precision(precision: str, device: torch.device, cpuinfo: str | None = None) -> None:
    """Refuse ``precision: bf16`` where it would not pay: it needs a CUDA device, or a CPU
    with AVX512-BF16 or AMX (``cpuinfo``: the text of ``/proc/cpuinfo``, this machine's by
    default). Without those instructions PyTorch emulates bf16 on the CPU, slower than fp32,
    so a user asking for speed gets a clear refusal rather than a slower sweep."""
    if precision != "bf16" or device.type == "cuda":
        return
    wanted = " nor ".join(BF16_CPU_FLAGS)
    if device.type != "cpu":
        raise InitsweepError(f"precision bf16 needs a CUDA device or a CPU with AVX512-BF16 or AMX "
                             f"(running on {device})")
    if not bf16_cpu_flags(cpuinfo_text() if cpuinfo is None else cpuinfo):
        raise InitsweepError(f"precision bf16 needs a CUDA device or a CPU with AVX512-BF16 or AMX "
                             f"(this CPU's flags in /proc/cpuinfo have neither {wanted})")


def autocast_for(spec: RunSpec, device: torch.device):
    """bf16 autocast for ``precision: bf16`` on CUDA or on a CPU with bf16 instructions
    (:func:`check_precision`, called when the sweep starts); training and evaluation alike."""
    if spec.train.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Lockstep(Protocol):
    """K models trained step for step: one module (:class:`Single`, K = 1) or K stacked
    copies under ``vmap`` (``batched.Stacked``). :func:`train_epoch`, :func:`evaluate` and
    :func:`fit` see only this, so the single and the vmapped path share one loop."""

    k: int
    device: torch.device

    def train_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[K, b, classes] for a training batch (``x`` as the batches of :func:`fit` give it)."""

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[K, b, classes] for one batch ``x`` [b, ...] shared by all K models, in eval mode."""

    def stop(self, models: list[int]) -> None:
        """Hold these (diverged) models' weights where they stand from now on."""

    def after_step(self) -> None:
        """Undo what the optimizer step just did to held weights."""

    def modules(self) -> list[nn.Module]:
        """Each model's current weights as a module (for the probe)."""


class Single:
    """One module as a :class:`Lockstep` of K = 1: its logits get a leading model axis.

    Its loss is the plain ``F.cross_entropy`` of the module's logits (see
    :func:`per_model_loss`), so a single run computes exactly what an ordinary loop would.
    """

    k = 1

    def __init__(self, module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], autocast,
                 device: torch.device):
        self.module, self.forward, self.autocast, self.device = module, forward, autocast, device

    def train_logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.forward(x).unsqueeze(0)

    def eval_logits(self, x: torch.Tensor) -> torch.Tensor:
        was_training = self.module.training
        self.module.eval()
        try:
            with self.autocast:
                return self.module(x).unsqueeze(0)
        finally:
            self.module.train(was_training)

    def stop(self, models: list[int]) -> None:
        pass  # its only model stopped: the loop ends before another step

    def after_step(self) -> None:
        pass

    def modules(self) -> list[nn.Module]:
        return [self.module]


@dataclass
class Metrics:
    """Mean cross-entropy and accuracy of each of K models over one split (NaN when empty;
    ``None`` for a split the run does not have, as its epoch records store it)."""

    loss: list[float | None]
    acc: list[float | None]
    predicted: torch.Tensor | None = None  # [K, n] uint8 on the CPU, when asked for


def as_bytes(labels: torch.Tensor) -> bytes:
    """Class indices [n] as one byte each (``RunResult.predicted``/``targets``): 10 classes
    need no more, and a run's 10,000 MNIST test images cost 10 KB."""
    return labels.to(device="cpu", dtype=torch.uint8).numpy().tobytes()


@dataclass
class TrainState:
    """What carries across the epochs of K models trained in lockstep."""

    active: torch.Tensor  # [K] bool: not diverged
    diverge_factor: float
    max_steps: int | None
    sync_every: int  # losses are checked on the host every this many steps
    steps: int = 0  # optimizer steps taken
    first_loss: torch.Tensor | None = None  # [K]: divergence is judged relative to it
    diverged_step: list[int | None] = field(default_factory=list)  # 1-based step whose loss was bad
    stopped_after: list[int | None] = field(default_factory=list)  # steps applied when found
    first_step_seconds: float | None = None  # forward + update of step 1 (torch.compile warms up there)
    log_every: int | None = None  # keep every this many steps' losses (RunSpec.log_every_steps)
    # (step, [K] losses, [K] active) on the device: read on the host once, at the end
    step_losses: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def start(cls, k: int, spec: RunSpec, device: torch.device) -> "TrainState":
        t = spec.train
        return cls(torch.ones(k, dtype=torch.bool, device=device), t.diverge_factor, t.max_steps,
                   1 if device.type == "cpu" else _SYNC_EVERY_ACCEL, diverged_step=[None] * k,
                   stopped_after=[None] * k, log_every=spec.log_every_steps)

    def losses_of(self, m: int) -> list[tuple[int, float]]:
        """Model ``m``'s kept step losses, up to the step it stopped after (on an accelerator
        a diverged model runs on until the next check; those steps are not its own)."""
        if not self.step_losses:
            return []
        last = self.stopped_after[m]
        losses = torch.stack([l for _, l, _ in self.step_losses])[:, m].tolist()
        active = torch.stack([a for _, _, a in self.step_losses])[:, m].tolist()
        return [(step, loss) for (step, _, _), loss, on in zip(self.step_losses, losses, active)
                if on and (last is None or step <= last)]

    def finished(self) -> bool:
        return not bool(self.active.any()) or (self.max_steps is not None and self.steps >= self.max_steps)


@dataclass
class EpochTotals:
    """Per-model sums over the steps an epoch applied ([K] tensors on the device)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: torch.Tensor


def per_model_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each of K models: logits [K, b, C], y [K, b] or shared [b] -> [K].

    K = 1 takes the plain call, so a single run's numbers are those of an ordinary loop.
    """
    k = logits.shape[0]
    if k == 1:
        return F.cross_entropy(logits[0].float(), y.reshape(-1), reduction=reduction).view(1)
    losses = F.cross_entropy(logits.float().flatten(0, 1), y.expand(k, -1).flatten(), reduction="none")
    return losses.view(k, -1).mean(1) if reduction == "mean" else losses.view(k, -1).sum(1)


def eval_batch_size(device: torch.device, k: int) -> int:
    """``EVAL_BATCH_CPU`` on the CPU; on an accelerator ``EVAL_BATCH`` images shared by K models."""
    return EVAL_BATCH_CPU if device.type == "cpu" else max(EVAL_BATCH_CPU, EVAL_BATCH // k)


def evaluate(model: Lockstep, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             keep_predictions: bool = False) -> Metrics:
    """Mean cross-entropy and accuracy of each model over ``batches`` (no gradients).

    ``keep_predictions``: also each model's predicted class per example, in batch order; the
    accuracy counts these very predictions, so it can be recomputed from them exactly.
    """
    loss_sum = torch.zeros(model.k, dtype=torch.float64, device=model.device)
    correct = torch.zeros(model.k, dtype=torch.int64, device=model.device)
    kept: list[torch.Tensor] = []
    n = 0
    with torch.no_grad():
        for xb, yb in batches:
            logits = model.eval_logits(xb)  # [K, b, C]
            loss_sum += per_model_loss(logits, yb, reduction="sum").double()
            predicted = logits.argmax(-1)  # [K, b]
            correct += (predicted == yb).sum(-1)
            if keep_predictions:
                kept.append(predicted.to(torch.uint8))
            n += len(yb)
    predictions = None
    if keep_predictions:
        predictions = torch.cat(kept, 1).cpu() if kept else torch.zeros(model.k, 0, dtype=torch.uint8)
    if n == 0:
        return Metrics([float("nan")] * model.k, [float("nan")] * model.k, predictions)
    return Metrics((loss_sum / n).tolist(), (correct.double() / n).tolist(), predictions)


def _judge(model: Lockstep, state: TrainState, pending: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
    """Find each model's first bad step among ``pending`` (one host sync for all) and stop it.

    ``pending`` holds (1-based step, losses [K], active [K]) of steps not yet checked.
    """
    losses = torch.stack([p[1] for p in pending])  # [S, K]
    was_active = torch.stack([p[2] for p in pending])  # [S, K]
    bad = (~torch.isfinite(losses) | (losses > state.diverge_factor * state.first_loss)) & was_active
    if not bool(bad.any()):
        return
    any_bad, first = bad.any(0).tolist(), bad.int().argmax(0).tolist()
    stopped = [m for m in range(model.k) if any_bad[m]]
    for m in stopped:
        state.diverged_step[m], state.stopped_after[m] = pending[first[m]][0], state.steps
        state.active[m] = False
    model.stop(stopped)


def train_epoch(model: Lockstep, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], opt: torch.optim.Optimizer,
                state: TrainState, on_step: Callable[[int], None] | None = None) -> EpochTotals:
    """One pass over ``batches``: each still-active model's update from its own loss.

    A model whose loss diverges is stopped before its bad step's update (on the CPU; on an
    accelerator at the next check) and masked out of the summed loss; the pass ends when
    no model is left or ``max_steps`` is reached. ``on_step(i)`` follows each applied step.
    """
    k, device = model.k, model.device
    loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
    correct = torch.zeros(k, dtype=torch.int64, device=device)
    seen = torch.zeros(k, dtype=torch.int64, device=device)
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # losses not yet checked on the host
    for i, (xb, yb) in enumerate(batches, start=1):
        t_first = time.perf_counter() if state.steps == 0 else None
        logits = model.train_logits(xb)  # [K, b, C]
        losses = per_model_loss(logits, yb)
        if state.first_loss is None:
            state.first_loss = losses.detach()
        pending.append((state.steps + 1, losses.detach(), state.active.clone()))
        if len(pending) >= state.sync_every:
            _judge(model, state, pending)
            pending.clear()
            if not bool(state.active.any()):
                break
        opt.zero_grad(set_to_none=True)
        torch.where(state.active, losses, torch.zeros_like(losses)).sum().backward()
        opt.step()
        model.after_step()
        if t_first is not None:
            sync(device)
            state.first_step_seconds = time.perf_counter() - t_first
        state.steps += 1
        if state.log_every and state.steps % state.log_every == 0:
            state.step_losses.append((state.steps, losses.detach(), state.active.clone()))
        b = yb.shape[-1]
        loss_sum += torch.where(state.active, losses.detach().double() * b, 0.0)
        correct += torch.where(state.active, (logits.detach().argmax(-1) == yb).sum(-1), 0)
        seen += torch.where(state.active, b, 0)
        if on_step is not None:
            on_step(i)
        if state.max_steps is not None and state.steps >= state.max_steps:
            break
    if pending:
        _judge(model, state, pending)
    return EpochTotals(loss_sum, correct, seen)


def fit(model: Lockstep, opt: torch.optim.Optimizer, specs: list[RunSpec], splits: Splits,
        results: list[RunResult], train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]], *,
        t_start: float, progress: ModelProgress | None = None, compiled: bool = False) -> None:
    """Train K runs in lockstep for their epochs, then probe and test them; fills ``results``.

    The runs share their training settings (``specs[0].train``): one run, or one group
    of ``batched.group_key``.

    ``train_batches()`` gives one epoch's batches (each model its own data order).
    ``compiled``: step 1 is ``torch.compile``'s warm-up, reported as ``compile_seconds``
    and left out of ``train_seconds``.
    """
    t = specs[0].train
    k, device = model.k, model.device
    state = TrainState.start(k, specs[0], device)
    steps_per_epoch = math.ceil(splits.n_train / t.batch_size)
    eval_batch = eval_batch_size(device, k)
    train_seconds = eval_seconds = 0.0
    samples = [0] * k
    best_val: list[float | None] = [None] * k
    save = t.save  # none | final | best: which weights travel back in ``weights``
    for epoch in range(1, t.epochs + 1):
        sync(device)
        t_epoch = time.perf_counter()
        reporting = state.active.tolist()  # models that diverged in an earlier epoch are done

        def on_step(i: int, epoch: int = epoch, reporting: list[bool] = reporting) -> None:
            for m in (m for m in range(k) if reporting[m]):
                progress(m, epoch, i, steps_per_epoch)

        totals = train_epoch(model, train_batches(), opt, state, None if progress is None else on_step)
        sync(device)
        warm_up = (state.first_step_seconds or 0.0) if compiled and epoch == 1 else 0.0
        train_seconds += time.perf_counter() - t_epoch - warm_up
        t_eval = time.perf_counter()
        val = evaluate(model, iterate_batches(splits.val_x, splits.val_y, eval_batch, shuffle=False)) \
            if splits.n_val else Metrics([None] * k, [None] * k)
        eval_seconds += time.perf_counter() - t_eval
        seen, loss_sum, correct = totals.seen.tolist(), totals.loss_sum.tolist(), totals.correct.tolist()
        for m, result in enumerate(results):
            if not reporting[m]:
                continue
            n = seen[m]
            train_loss = loss_sum[m] / n if n else float("nan")
            train_acc = correct[m] / n if n else float("nan")
            result.epochs.append(EpochRecord(epoch, train_loss, train_acc, val.loss[m], val.acc[m],
                                             time.perf_counter() - t_epoch))
            result.final_train_loss, result.final_train_acc = train_loss, train_acc
            samples[m] += n
            if val.acc[m] is not None and math.isfinite(val.acc[m]):
                improved = best_val[m] is None or val.acc[m] > best_val[m]
                best_val[m] = val.acc[m] if best_val[m] is None else max(best_val[m], val.acc[m])
                if save == "best" and improved:  # the first epoch that reached the best accuracy
                    keep_weights(model.modules()[m], result, epoch)
        if state.finished():
            break

    for module, spec, result in zip(model.modules(), specs, results):
        if save == "final" or (save == "best" and result.weights is None):  # best: no validation split
            keep_weights(module, result, len(result.epochs))
        probed = probe_for_run(module, spec, splits.train_x, splits.train_y, "final")
        if probed is not None:
            result.layers += probed.rows("final")
    t_eval = time.perf_counter()
    test = evaluate(model, iterate_batches(splits.test_x, splits.test_y, eval_batch, shuffle=False),
                    keep_predictions=True)
    eval_seconds += time.perf_counter() - t_eval
    targets = as_bytes(splits.test_y)
    peak = peak_rss_mb()
    for m, result in enumerate(results):
        if state.diverged_step[m] is not None:
            result.status, result.diverged_step, result.steps = "diverged", state.diverged_step[m], state.stopped_after[m]
        else:
            result.steps = state.steps
        if compiled:
            result.compile_seconds = state.first_step_seconds
        result.test_loss, result.test_acc, result.best_val_acc = test.loss[m], test.acc[m], best_val[m]
        result.predicted, result.targets = as_bytes(test.predicted[m]), targets
        result.step_losses = state.losses_of(m)
        result.train_seconds, result.eval_seconds = train_seconds, eval_seconds
        result.samples_per_sec = samples[m] / train_seconds if train_seconds > 0 else None
        result.wall_seconds, result.peak_rss_mb = time.perf_counter() - t_start, peak


def keep_weights(module: nn.Module, result: RunResult, epoch: int) -> None:
    """Copy a model's weights into ``result.weights`` (on the CPU: the result may be pickled to
    another process or machine) as the checkpoint of ``epoch``."""
    result.weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()}
    result.checkpoint_epoch = epoch


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
                       environment=environment(device), memory_format=str(memory_format).rsplit(".", 1)[-1],
                       compiled=compile)
    # per-layer diagnostics before training: one fixed batch, no RNG, model state restored
    probed = probe_for_run(model, spec, splits.train_x, splits.train_y, "init")
    if probed is not None:
        result.layers += probed.rows("init")
        result.verdict = probed.verdict
    forward = torch.compile(model) if compile else model
    single = Single(model, forward, autocast_for(spec, device), device)
    sync(device)
    result.setup_seconds = time.perf_counter() - t_start
    fit(single, optimizer, [spec], splits, [result],
        lambda: iterate_batches(splits.train_x, splits.train_y, spec.train.batch_size, generator=data_gen),
        t_start=t_start, progress=None if progress is None else lambda m, e, i, n: progress(e, i, n),
        compiled=compile)
    return result


def run_safely(spec: RunSpec, device: torch.device | str = "cpu", **kwargs: Any) -> RunResult:
    """:func:`run`, with any exception recorded as a ``failed`` result (Ctrl-C still propagates)
    and the warnings it raised recorded in its ``warnings``."""
    t_start = time.perf_counter()
    outcome: list[RunResult] = []
    with recorded_warnings(lambda: outcome):
        try:
            outcome.append(run(spec, device, **kwargs))
        except Exception as exc:  # noqa: BLE001 — one broken run must not end the sweep
            outcome.append(failed_result(spec.run_id, exc, device, t_start))
    return outcome[0]
