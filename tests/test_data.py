"""Tests for initsweep.data: the shipped sample, IDX reading, source resolution and
fallback, splits and batching. No network: roots live in tmp_path, downloads are either
forbidden (offline) or aimed at a silent server on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from initsweep import data
from initsweep.errors import DataError


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Nothing reads ~/.cache or the machine's /usr/share/datasets; caches start empty."""
    monkeypatch.setenv(data.ROOT_ENV, str(tmp_path / "env-root"))
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"mnist": (), "fashion-mnist": (str(tmp_path / "system"),)})
    data.load_raw.cache_clear()
    data._load_splits.cache_clear()


def cfg(dataset="mnist", root=None, download=True, fallback="sample"):
    return SimpleNamespace(dataset=dataset, root=root, download=download, fallback=fallback)


def sample() -> data.RawData:
    return data.load_raw(data.resolve_source(cfg("mnist-sample")))


def row_hashes(x: np.ndarray | torch.Tensor) -> list[bytes]:
    arr = x.cpu().numpy() if isinstance(x, torch.Tensor) else x
    return [hashlib.sha1(r.tobytes()).digest() for r in arr.reshape(len(arr), -1)]


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    """The IDX format as LeCun's files have it: 0, 0, 0x08 (uint8), ndim, big-endian sizes."""
    payload = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload += np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload, compresslevel=1))
    else:
        path.write_bytes(payload)


def write_dataset(directory: Path, raw: data.RawData, gz: bool) -> None:
    for key, stem in data._IDX_FILES.items():
        write_idx(directory / stem, getattr(raw, key), gz)


# --- the shipped sample -------------------------------------------------------------

def test_sample_shapes_labels_and_pixels():
    raw = sample()
    assert raw.train_x.shape == (4000, 28, 28) and raw.test_x.shape == (1000, 28, 28)
    assert raw.train_y.shape == (4000,) and raw.test_y.shape == (1000,)
    assert {a.dtype for a in (raw.train_x, raw.train_y, raw.test_x, raw.test_y)} == {np.dtype(np.uint8)}
    assert np.bincount(raw.train_y, minlength=10).tolist() == [400] * 10
    assert np.bincount(raw.test_y, minlength=10).tolist() == [100] * 10
    assert raw.train_x.min() == 0 and raw.train_x.max() == 255
    # Real MNIST digits: the full training set's pixel mean/std are 0.1307 / 0.3081.
    mean, std = data._pixel_stats(raw.train_x)
    assert mean == pytest.approx(0.1307, abs=0.003) and std == pytest.approx(0.3081, abs=0.003)
    # Not label-sorted (downstream takes "the first N"), and train/test are disjoint.
    assert len(set(raw.train_y[:50].tolist())) == 10
    assert not set(row_hashes(raw.train_x)) & set(row_hashes(raw.test_x))
    assert len(set(row_hashes(raw.train_x))) == 4000


def test_sample_sha256_matches_provenance():
    provenance = (data.SAMPLE_PATH.parent / "PROVENANCE.md").read_text()
    recorded = re.search(r"sha256 \(shipped file\) \| `([0-9a-f]{64})`", provenance)
    assert recorded, "PROVENANCE.md must record the shipped file's sha256"
    assert hashlib.sha256(data.SAMPLE_PATH.read_bytes()).hexdigest() == recorded.group(1)
    assert sorted(p.name for p in data.SAMPLE_PATH.parent.iterdir()) == ["PROVENANCE.md", "mnist_5k.npz"]


def test_sample_arrays_are_read_only_and_cached():
    raw = sample()
    assert sample() is raw
    with pytest.raises(ValueError):
        raw.train_x[0, 0, 0] = 1


# --- IDX files: layouts, formats, equivalence with torchvision's reader -------------

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["torchvision", "named", "bare"])
def test_idx_layouts_read_back_identical(tmp_path, layout, gz):
    raw = sample()
    root = tmp_path / "root"
    directory = {"torchvision": root / "MNIST" / "raw", "named": root / "mnist", "bare": root}[layout]
    write_dataset(directory, raw, gz)
    source = data.resolve_source(cfg("mnist", root=str(root), fallback="none"), offline=True)
    assert source == data.DataSource("mnist", "mnist", str(directory), None)
    got = data.load_raw(source)
    for key in data._IDX_FILES:
        np.testing.assert_array_equal(getattr(got, key), getattr(raw, key))


def test_debian_fashion_mnist_layout(tmp_path):
    # The package dataset-fashion-mnist installs exactly these four .gz files.
    raw = sample()
    system = tmp_path / "system"
    write_dataset(system, raw, gz=True)
    assert sorted(p.name for p in system.iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    source = data.resolve_source(cfg("fashion-mnist", root=str(tmp_path / "empty"), fallback="none"), offline=True)
    assert (source.dataset, source.location) == ("fashion-mnist", str(system))
    np.testing.assert_array_equal(data.load_raw(source).test_x, raw.test_x)


def test_fashion_mnist_ignores_bare_root(tmp_path):
    # Bare IDX files in <root> are MNIST's by convention; Fashion-MNIST must not pick them up.
    write_dataset(tmp_path / "root", sample(), gz=False)
    with pytest.raises(DataError):
        data.resolve_source(cfg("fashion-mnist", root=str(tmp_path / "root"), fallback="none"), offline=True)


def test_reader_agrees_with_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    raw = sample()
    write_dataset(tmp_path / "MNIST" / "raw", raw, gz=False)
    tv = torchvision.datasets.MNIST(str(tmp_path), train=False, download=False)
    ours = data.load_raw(data.resolve_source(cfg(root=str(tmp_path)), offline=True))
    np.testing.assert_array_equal(tv.data.numpy(), ours.test_x)
    np.testing.assert_array_equal(tv.targets.numpy(), ours.test_y)


def test_truncated_idx_is_a_data_error_naming_the_file(tmp_path):
    write_dataset(tmp_path, sample(), gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*truncated"):
        data.load_raw(data.resolve_source(cfg(root=str(tmp_path)), offline=True))
    bad.write_bytes(b"\x00\x00\x08\x03\x00")  # a header cut inside its sizes
    data.load_raw.cache_clear()
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*truncated"):
        data.load_raw(data.resolve_source(cfg(root=str(tmp_path)), offline=True))


def test_non_idx_file_is_a_data_error(tmp_path):
    write_dataset(tmp_path, sample(), gz=False)
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01" + bad.read_bytes()[4:])  # 0x0D: float32, not uint8
    with pytest.raises(DataError, match=re.escape(str(bad)) + " is not an IDX file"):
        data.load_raw(data.resolve_source(cfg(root=str(tmp_path)), offline=True))


def test_env_root_and_home_expansion(tmp_path, monkeypatch):
    write_dataset(tmp_path / "env-root" / "MNIST" / "raw", sample(), gz=True)
    assert data.resolve_source(cfg(), offline=True).location == str(tmp_path / "env-root" / "MNIST" / "raw")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.data_root("~/env-root") == tmp_path / "env-root"
    monkeypatch.delenv(data.ROOT_ENV)
    assert data.data_root(None) == tmp_path / ".cache" / "initsweep"


# --- fallback and failure ----------------------------------------------------------

def _no_download(*_args, **_kwargs):
    raise AssertionError("a download was attempted")


def test_missing_data_falls_back_to_sample_with_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", _no_download)
    root = tmp_path / "empty"
    source = data.resolve_source(cfg("mnist", root=str(root), download=False))
    assert (source.dataset, source.requested, source.location) == ("mnist-sample", "mnist", str(data.SAMPLE_PATH))
    assert str(root / "MNIST" / "raw") in source.fallback_reason and "data.download is false" in source.fallback_reason


def test_offline_never_downloads_and_never_substitutes(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", _no_download)
    root = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        data.resolve_source(cfg("mnist", root=str(root)), offline=True)
    assert "offline: no download attempted" in str(info.value) and str(root / "MNIST" / "raw") in str(info.value)
    assert "\n" not in str(info.value)


def test_fallback_none_raises_one_line_naming_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", _no_download)
    root = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        data.resolve_source(cfg("fashion-mnist", root=str(root), download=False, fallback="none"))
    message = str(info.value)
    assert "\n" not in message and info.value.lines() == [message]
    for looked in (root / "FashionMNIST" / "raw", root / "fashion-mnist", tmp_path / "system"):
        assert str(looked) in message
    assert "data.download is false" in message


def test_incomplete_directory_is_not_a_hit(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", _no_download)
    write_dataset(tmp_path / "MNIST" / "raw", sample(), gz=False)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    assert data.resolve_source(cfg(root=str(tmp_path), download=False)).dataset == "mnist-sample"


def test_download_to_a_silent_server_times_out_and_falls_back(tmp_path, monkeypatch):
    """The guard against a network that drops packets: a server that accepts and never
    answers must cost one DOWNLOAD_TIMEOUT_S, not the OS's minutes-long TCP timeout."""
    torchvision = pytest.importorskip("torchvision")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes handshakes; nobody ever replies
        port = server.getsockname()[1]
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
        monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.5)
        # Backstop so a broken guard fails this test instead of hanging it: closing the
        # listener resets the pending connection.
        backstop = threading.Timer(8.0, server.close)
        backstop.start()
        before = socket.getdefaulttimeout()
        start = time.perf_counter()
        try:
            source = data.resolve_source(cfg(root=str(tmp_path / "dl")))
        finally:
            backstop.cancel()
        elapsed = time.perf_counter() - start
    assert source.dataset == "mnist-sample" and "download into" in source.fallback_reason
    assert "timed out" in source.fallback_reason
    assert elapsed < 5.0
    assert socket.getdefaulttimeout() == before


def test_download_success_is_used(tmp_path, monkeypatch):
    def fake_download(dataset, root):
        write_dataset(root / "FashionMNIST" / "raw", sample(), gz=False)
        return root / "FashionMNIST" / "raw"

    monkeypatch.setattr(data, "_download", fake_download)
    source = data.resolve_source(cfg("fashion-mnist", root=str(tmp_path)))
    assert source == data.DataSource("fashion-mnist", "fashion-mnist", str(tmp_path / "FashionMNIST" / "raw"))
    monkeypatch.setattr(data, "_download", lambda dataset, root: root)  # "succeeds", writes nothing
    source = data.resolve_source(cfg("mnist", root=str(tmp_path / "nothing")))
    assert source.dataset == "mnist-sample" and "left no IDX files" in source.fallback_reason

# --- splits --------------------------------------------------------------------------

SAMPLE_SOURCE = data.DataSource("mnist-sample", "mnist-sample", str(data.SAMPLE_PATH))


def test_split_sizes_and_disjointness():
    raw = sample()
    s = data.load_splits(SAMPLE_SOURCE, val_fraction=0.1, split_seed=0)
    assert (s.n_train, s.n_val, s.n_test) == (3600, 400, 1000)
    assert (s.n_train, s.n_val, s.n_test) == data.split_sizes(
        *data.dataset_sizes("mnist-sample"), val_fraction=0.1, train_limit=None, test_limit=None)
    assert s.train_x.shape == (3600, 1, 28, 28) and s.train_x.dtype == torch.float32
    assert s.train_y.dtype == torch.int64
    # Undo the normalization to recover the bytes, then compare rows by hash.
    def restore(x):
        return torch.round((x * s.std + s.mean) * 255).to(torch.uint8).squeeze(1)
    train, val, test = (set(row_hashes(restore(x))) for x in (s.train_x, s.val_x, s.test_x))
    assert len(train) == 3600 and len(val) == 400
    assert not train & val and not train & test and not val & test
    assert train | val == set(row_hashes(raw.train_x))
    assert test == set(row_hashes(raw.test_x))


def test_split_is_deterministic_per_seed():
    a = data.load_splits(SAMPLE_SOURCE, split_seed=1)
    data._load_splits.cache_clear()
    b = data.load_splits(SAMPLE_SOURCE, split_seed=1)
    c = data.load_splits(SAMPLE_SOURCE, split_seed=2)
    assert a is not b
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.val_y, c.val_y)


def test_normalization_uses_train_statistics():
    s = data.load_splits(SAMPLE_SOURCE, val_fraction=0.2, split_seed=0)
    assert s.train_x.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert s.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    # Same affine map for every split: val/test are near, not exactly, 0/1.
    assert abs(s.test_x.mean().item()) < 0.05 and s.mean == pytest.approx(0.1307, abs=0.005)


def test_limits_and_zero_val_fraction():
    raw = sample()
    full = data.load_splits(SAMPLE_SOURCE, val_fraction=0.1, split_seed=3)
    s = data.load_splits(SAMPLE_SOURCE, val_fraction=0.1, split_seed=3, train_limit=500, test_limit=64)
    assert (s.n_train, s.n_val, s.n_test) == (500, 400, 64)
    assert torch.equal(s.val_y, full.val_y)  # the limit never moves examples into or out of val
    assert torch.equal(s.train_y, full.train_y[:500])
    np.testing.assert_array_equal(s.test_y.numpy(), raw.test_y[:64])
    assert s.train_x.mean().item() == pytest.approx(0.0, abs=1e-4)  # stats of the 500 kept
    z = data.load_splits(SAMPLE_SOURCE, val_fraction=0.0, train_limit=10_000)
    assert (z.n_train, z.n_val, z.n_test) == (4000, 0, 1000) and z.val_x.shape == (0, 1, 28, 28)


def test_dataset_sizes():
    assert data.dataset_sizes("mnist") == (60_000, 10_000)
    assert data.dataset_sizes("fashion-mnist") == (60_000, 10_000)
    assert data.dataset_sizes("mnist-sample") == (4_000, 1_000)
    with pytest.raises(ValueError, match="mnist-sample"):
        data.dataset_sizes("cifar10")


# --- batching ------------------------------------------------------------------------

def test_shuffled_batches_cover_every_index_once():
    n, bs = 103, 10
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    y = torch.arange(n)
    batches = list(data.iterate_batches(x, y, bs, generator=torch.Generator().manual_seed(0), shuffle=True))
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(n)) and seen.tolist() != list(range(n))
    assert all(torch.equal(bx.view(-1).long(), by) for bx, by in batches)  # x and y stay paired


def test_batches_reproducible_per_seed_and_ordered_without_shuffle():
    x, y = torch.randn(50, 3), torch.arange(50)

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([b for _, b in data.iterate_batches(x, y, 8, generator=g, shuffle=True)])

    assert torch.equal(order(7), order(7)) and not torch.equal(order(7), order(8))
    plain = list(data.iterate_batches(x, y, 8, generator=None, shuffle=False))
    assert torch.equal(torch.cat([b for _, b in plain]), y)
    assert torch.equal(torch.cat([a for a, _ in plain]), x)
    with pytest.raises(ValueError):
        next(data.iterate_batches(x, y, 0, generator=None, shuffle=False))
