"""What produced a run: the code (a git checkout's commit and dirty flag) and the machine
(CPU model, GPU, CUDA and cuDNN, library versions).

Every fact is best-effort: a folder that is not a git checkout, a machine without git, a
CPU that does not name itself, a torch built without CUDA all give ``None``, never an
error. A sweep must not fail because its provenance cannot be read.

The git facts are read once per sweep, in the process that starts it (``run_sweep``), from
the folder the user started it in: a pool or Ray worker's working directory is not the
user's (a Ray worker's is a folder Ray made, perhaps on another machine). The machine facts
are read by the process that trains (``train.environment``), because they describe it.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

GIT_TIMEOUT_S = 10.0  # a hung git (a network file system, a lock) must not hold up a sweep


@dataclass(frozen=True)
class GitState:
    """The checkout a sweep was started from; both ``None`` outside a git checkout."""

    commit: str | None = None  # the full hash of HEAD
    dirty: bool | None = None  # tracked files changed or untracked files present (``git status``)


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder ARGS``'s stdout, or ``None`` when git is absent, fails or hangs."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(folder: str | Path | None = None) -> GitState:
    """The commit of the checkout ``folder`` (default: the working directory) is in, and
    whether it has uncommitted changes. Untracked files count as dirty: a new module or
    config that is not committed is code the commit does not hold. Ignored files (the
    results folder) do not."""
    folder = Path.cwd() if folder is None else Path(folder)
    head = _git(folder, "rev-parse", "--verify", "HEAD")
    if not head:  # not a checkout, no git, or a repository without a commit yet
        return GitState()
    status = _git(folder, "status", "--porcelain")
    return GitState(head.strip(), None if status is None else bool(status.strip()))


@lru_cache(maxsize=1)
def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


@lru_cache(maxsize=4)
def package_version(name: str) -> str | None:
    """An installed distribution's version, read without importing it (torchvision's import
    costs seconds); ``None`` when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def accelerator(device_type: str, index: int | None) -> dict[str, str | None]:
    """GPU name (for a run on a CUDA device), and the CUDA and cuDNN versions torch was built
    with (``None`` for a CPU-only build)."""
    import torch

    gpu = None
    if device_type == "cuda" and torch.cuda.is_available():
        try:
            gpu = torch.cuda.get_device_name(index if index is not None else torch.cuda.current_device())
        except (RuntimeError, AssertionError):
            gpu = None
    cudnn = None
    if torch.version.cuda:
        try:
            version = torch.backends.cudnn.version()
            cudnn = str(version) if version else None
        except (RuntimeError, OSError):
            cudnn = None
    return {"gpu_name": gpu, "cuda": torch.version.cuda, "cudnn": cudnn}


# The /proc/cpuinfo flags of the CPU instructions that make bf16 autocast pay on the CPU:
# AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and later) and AMX (Intel Sapphire
# Rapids and later). ``torch.backends.cpu.get_cpu_capability()`` says only ``AVX512``, the
# same on CPUs with and without them, so the flags are read from the kernel's own list.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in the text of ``/proc/cpuinfo`` (its
    ``flags`` line on x86, ``Features`` on ARM); empty when the text lists none."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def bf16_cpu_flags(cpuinfo: str) -> list[str]:
    """Which of :data:`BF16_CPU_FLAGS` the CPU described by ``cpuinfo`` has (a pure function
    of the text, so both answers are testable on any machine)."""
    flags = cpu_flags(cpuinfo)
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


@lru_cache(maxsize=1)
def cpuinfo_text() -> str:
    """This machine's ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
