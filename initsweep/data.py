"""Datasets as tensors resident on the training device, batched by index slicing.

Why no ``DataLoader`` and no per-sample transform: MNIST-sized data (60k x 28 x 28 bytes,
188 MB as float32) fits on any device, so it is read once per process, normalized once
with the training split's mean/std, and every batch is one ``x[idx]`` gather. That keeps
the input pipeline out of the measurements and makes data order a pure function of a
``torch.Generator`` the caller seeds: the same seed gives the same batches bit for bit.

Where the bytes come from (``resolve_source``):

* ``mnist`` / ``fashion-mnist``: the four IDX files (plain or ``.gz``), looked for in
  torchvision's layout ``<root>/MNIST/raw`` (``FashionMNIST/raw``), in ``<root>/mnist``
  (``<root>/fashion-mnist``), for MNIST directly in ``<root>`` (not for Fashion-MNIST:
  the file names are the same, so a bare root would be ambiguous), and in
  ``SYSTEM_DIRS`` (Debian's ``dataset-fashion-mnist`` package installs
  ``/usr/share/datasets/fashion-mnist/*-ubyte.gz``). If none is complete and download is
  allowed, torchvision downloads into ``<root>`` (it verifies MD5 checksums).
* ``mnist-sample``: 5,000 real MNIST digits shipped in the package
  (``sample_data/mnist_5k.npz``; see ``PROVENANCE.md`` there), 4,000 train / 1,000 test.
* Otherwise ``fallback`` decides. ``sample`` (the default) takes the dataset's own sample:
  ``mnist-sample`` stands in for ``mnist`` (the same digits, fewer of them); Fashion-MNIST
  has none, so it is an error, never MNIST digits trained under a Fashion-MNIST name.
  ``mnist-sample`` takes the MNIST sample for any dataset, a different one for
  Fashion-MNIST, which the user asked for by name (and every report marks). ``none``, or
  ``offline`` (the CLI's ``--offline``: no download, no substitute data), is an error. The
  ``DataSource`` of a fallback says why; a ``DataError`` names every place looked at and
  how to allow the substitution.

``root`` is ``data.root``, else ``$INITSWEEP_DATA``, else ``~/.cache/initsweep``. A root
from ``$INITSWEEP_DATA`` must exist before anything is downloaded into it (a ``DataError``
otherwise): a mistyped variable must not create folders; reading never creates any.

Splits (``load_splits``): a ``split_seed`` permutation of the full training set; its
first ``round(val_fraction * N)`` indices are the validation set, the rest (in permutation
order) the training set, of which ``train_limit`` keeps the first N, i.e. a random subset
drawn by ``split_seed`` that never overlaps validation. ``test_limit`` keeps the first N
test examples in file order. Mean/std come from the (limited) training split only.

Resolve the source once, in the process that owns the sweep (it may download), and hand
the ``DataSource`` to workers; they only call ``load_splits``, which never downloads.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .errors import DataError

SAMPLE = "mnist-sample"
SAMPLE_PATH = Path(__file__).resolve().parent / "sample_data" / "mnist_5k.npz"
DEFAULT_ROOT = "~/.cache/initsweep"
ROOT_ENV = "INITSWEEP_DATA"
# Directories outside <root> that distributions install the IDX files into. Tests point
# this elsewhere so the machine's own files do not leak in.
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "mnist": (),
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
}
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_SIZES = {"mnist": (60_000, 10_000), "fashion-mnist": (60_000, 10_000), SAMPLE: (4_000, 1_000)}
# Per socket operation, not per file: without it urllib waits for the OS's TCP timeout
# (minutes, times every file and mirror) where packets are dropped instead of refused.
DOWNLOAD_TIMEOUT_S = 30.0


class DataSettings(Protocol):
    """The attributes of the config's ``data`` section that ``resolve_source`` reads."""

    dataset: str
    root: str | None
    download: bool
    fallback: str


@dataclass(frozen=True)
class DataSource:
    """Where a run's data actually comes from; stored with every run."""

    dataset: str  # the dataset used: 'mnist' | 'fashion-mnist' | 'mnist-sample'
    requested: str  # what the config asked for
    location: str  # the directory of IDX files, or the sample file
    fallback_reason: str | None = None  # set exactly when dataset != requested


@dataclass(frozen=True, eq=False)
class RawData:
    """Undecoded dataset: uint8 images [N, 28, 28] and uint8 labels [N], read-only."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True, eq=False)
class Splits:
    """Normalized tensors on one device: x float32 [N, 1, 28, 28], y int64 [N].

    Shared by every run of the process (cached): never modify them in place.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float  # of the training split's pixels scaled to [0, 1]
    std: float

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    @property
    def n_val(self) -> int:
        return len(self.val_y)

    @property
    def n_test(self) -> int:
        return len(self.test_y)


def dataset_sizes(dataset: str) -> tuple[int, int]:
    """(full training set, test set) sizes of a dataset, for planning; reads nothing."""
    if dataset not in _SIZES:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(_SIZES)}")
    return _SIZES[dataset]


def split_sizes(n_train_full: int, n_test_full: int, *, val_fraction: float,
                train_limit: int | None, test_limit: int | None) -> tuple[int, int, int]:
    """(train, val, test) sizes that ``load_splits`` produces; one formula for both."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * n_train_full))
    n_train = n_train_full - n_val
    if train_limit is not None:
        n_train = min(n_train, train_limit)
    n_test = n_test_full if test_limit is None else min(n_test_full, test_limit)
    return n_train, n_val, n_test


def data_root(root: str | None) -> Path:
    """The configured root, else ``$INITSWEEP_DATA``, else ``~/.cache/initsweep``."""
    chosen = root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().absolute()


def candidate_dirs(dataset: str, root: Path) -> list[Path]:
    """Every directory ``resolve_source`` looks in for ``dataset``'s IDX files, in order."""
    dirs = [root / _TORCHVISION_CLASS[dataset] / "raw", root / dataset]
    if dataset == "mnist":
        dirs.append(root)
    dirs += [Path(d) for d in SYSTEM_DIRS.get(dataset, ())]
    return dirs


def _idx_path(directory: Path, stem: str) -> Path | None:
    """The plain file if present (torchvision extracts next to the .gz), else the .gz."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _complete(directory: Path) -> bool:
    return all(_idx_path(directory, stem) is not None for stem in _IDX_FILES.values())


def _download(dataset: str, root: Path) -> Path:
    """torchvision's download (checksummed) into ``root``; returns the raw directory."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST}[dataset]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # torchvision prints its progress to stdout, where `plan -f json` writes its JSON
        with contextlib.redirect_stdout(sys.stderr):
            cls(str(root), train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous)
    return root / _TORCHVISION_CLASS[dataset] / "raw"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def resolve_source(cfg: DataSettings, *, offline: bool = False) -> DataSource:
    """Find (or download, unless ``offline`` or ``download: false``) the requested data.

    Falls back to the shipped sample as ``cfg.fallback`` allows (see the module docstring;
    never when ``offline``) and records why; otherwise raises ``DataError`` with one line
    naming every directory looked at. ``run`` and ``plan`` both resolve through here.
    """
    requested = cfg.dataset
    if requested == SAMPLE:
        return DataSource(SAMPLE, SAMPLE, str(SAMPLE_PATH))
    if requested not in _TORCHVISION_CLASS:
        raise DataError(f"data.dataset: unknown dataset {requested!r}; valid: {', '.join(_SIZES)}")
    root = data_root(cfg.root)
    dirs = candidate_dirs(requested, root)
    for directory in dirs:
        if _complete(directory):
            return DataSource(requested, requested, str(directory))

    if offline:
        why = "offline: no download attempted"
    elif not cfg.download:
        why = "data.download is false"
    elif cfg.root is None and os.environ.get(ROOT_ENV) and not root.exists():
        # A download creates its folder; a mistyped $INITSWEEP_DATA would scatter data
        # folders wherever it points, so the user creates the root, not the download.
        raise DataError(f"${ROOT_ENV} is {os.environ[ROOT_ENV]}, which does not exist: create that folder "
                        f"to download {requested} into it, or unset ${ROOT_ENV} (default {DEFAULT_ROOT})")
    else:
        try:
            downloaded = _download(requested, root)
        except (OSError, RuntimeError) as err:  # URLError and timeouts are OSErrors
            why = f"download into {root} failed: {_one_line(err)}"
        else:
            if _complete(downloaded):
                return DataSource(requested, requested, str(downloaded))
            # torchvision returns early, downloading nothing, when it finds its legacy
            # processed/*.pt cache.
            why = f"torchvision's download left no IDX files in {downloaded}"
    looked = ", ".join(str(d) for d in dirs)
    reason = f"{requested} IDX files not found in {looked}; {why}"
    substitute = cfg.fallback == SAMPLE or (cfg.fallback == "sample" and requested == "mnist")
    if substitute and not offline:
        return DataSource(SAMPLE, requested, str(SAMPLE_PATH), fallback_reason=reason)
    remedy = "put them there, or set data.root or $" + ROOT_ENV
    if not offline and requested == "mnist":  # --offline never substitutes: nothing to allow
        remedy += "; data.fallback: sample trains on the shipped 5,000-digit MNIST sample"
    elif not offline:
        remedy += (f"; to train on MNIST digits instead of {requested}, a different dataset that every "
                   f"report then marks, set data.fallback: {SAMPLE}")
    raise DataError(f"{reason} ({remedy})")


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (plain or gzip) as a read-only uint8 array of the shape in its header.

    Format: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, then
    that many big-endian int32 sizes, then the data.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read {path}: {_one_line(err)}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad header {raw[:4].hex()})")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[:offset].ljust(offset, b"\0"), dtype=">i4", offset=4))
    if len(raw) - offset != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: header says {shape}, "
                        f"found {len(raw) - offset} data bytes (delete it to download again)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _check(arrays: dict[str, np.ndarray], where: str) -> RawData:
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise DataError(f"{where}: {part} images {x.shape} and labels {y.shape} "
                            "are not [N, 28, 28] and [N]")
        if y.size and y.max() > 9:
            raise DataError(f"{where}: {part} labels must be 0..9, found {int(y.max())}")
    for arr in arrays.values():
        arr.setflags(write=False)
    return RawData(**arrays)


@functools.lru_cache(maxsize=4)
def load_raw(source: DataSource) -> RawData:
    """The source's uint8 arrays, read once per process (gz IDX, 70k images: ~0.4 s)."""
    if source.dataset == SAMPLE:
        try:
            with np.load(source.location, allow_pickle=False) as npz:
                arrays = {"train_x": npz["x_train"], "train_y": npz["y_train"],
                          "test_x": npz["x_test"], "test_y": npz["y_test"]}
        except (OSError, KeyError, ValueError) as err:
            raise DataError(f"cannot read the MNIST sample {source.location}: {_one_line(err)}") from err
        return _check(arrays, source.location)
    directory = Path(source.location)
    arrays = {}
    for key, stem in _IDX_FILES.items():
        path = _idx_path(directory, stem)
        if path is None:
            raise DataError(f"{directory / stem}[.gz] not found")
        arrays[key] = read_idx(path)
    return _check(arrays, str(directory))


def _pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Exact mean/std of uint8 pixels scaled to [0, 1], from a 256-bin histogram in
    float64. torch's bincount counts uint8 in place (0.03 s for 54k images; numpy's
    first copies them to int64: 0.6 s and 340 MB)."""
    if not images.flags.writeable:  # torch.from_numpy warns on read-only (cached) arrays
        images = images.copy()
    counts = torch.from_numpy(images).reshape(-1).bincount(minlength=256).numpy().astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum()
    mean = float((counts * values).sum() / n)
    var = float((counts * (values - mean) ** 2).sum() / n)
    return mean, var ** 0.5


def _to_device(images: np.ndarray, labels: np.ndarray, mean: float, std: float,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # uint8 travels to the device (4x smaller than float32) and is converted there.
    x = torch.from_numpy(images).to(device).unsqueeze(1)  # [N, 1, 28, 28]
    x = (x.to(torch.float32) / 255.0 - mean) / std
    return x, torch.from_numpy(labels.astype(np.int64)).to(device)


def load_splits(source: DataSource, *, val_fraction: float = 0.1, split_seed: int = 0,
                train_limit: int | None = None, test_limit: int | None = None,
                device: str | torch.device = "cpu") -> Splits:
    """Train/val/test tensors on ``device``; see the module docstring for the split rule.

    Cached per process for each distinct argument set, so every run of a sweep with the
    same data settings shares one copy.
    """
    return _load_splits(source, val_fraction, split_seed, train_limit, test_limit, torch.device(device))


@functools.lru_cache(maxsize=2)
def _load_splits(source: DataSource, val_fraction: float, split_seed: int,
                 train_limit: int | None, test_limit: int | None, device: torch.device) -> Splits:
    raw = load_raw(source)
    n_train, n_val, n_test = split_sizes(len(raw.train_y), len(raw.test_y), val_fraction=val_fraction,
                                         train_limit=train_limit, test_limit=test_limit)
    perm = torch.randperm(len(raw.train_y), generator=torch.Generator().manual_seed(split_seed)).numpy()
    val_idx, train_idx = perm[:n_val], perm[n_val:n_val + n_train]
    train_x = raw.train_x[train_idx]
    mean, std = _pixel_stats(train_x)
    tx, ty = _to_device(train_x, raw.train_y[train_idx], mean, std, device)
    vx, vy = _to_device(raw.train_x[val_idx], raw.train_y[val_idx], mean, std, device)
    sx, sy = _to_device(raw.test_x[:n_test].copy(), raw.test_y[:n_test], mean, std, device)
    return Splits(tx, ty, vx, vy, sx, sy, mean=mean, std=std)


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *,
                    generator: torch.Generator | None = None,
                    shuffle: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches by index slicing; the last, smaller batch is kept.

    ``shuffle=True`` draws one ``randperm`` per call from ``generator`` (a CPU generator
    the caller seeds, so data order is reproducible on any device); ``shuffle=False``
    yields contiguous views in order, for evaluation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    n = len(x)
    if not shuffle:
        for start in range(0, n, batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(x.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]

