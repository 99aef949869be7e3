"""Time one `initsweep probe` point: a 50-layer plain CNN of width 32 (He + ReLU) on one batch.

    .venv/bin/python benchmarks/bench_probe.py [--depth 50] [--width 32] [--batch-size 64]
                                               [--repeats 7] [--threads N]

What is timed, with ``time.perf_counter`` on the CPU: building and initializing the model
(what ``probe_spec`` does for each point; PyTorch's default layout, which measured 6%
faster here than channels_last for the probe), then ``probe_model`` (one forward and backward
pass with hooks, the per-layer statistics, and the mean-field prediction). The first
point (imports, the quadrature tables' first chunks, oneDNN's kernel selection) is a
warm-up, reported separately. The data (the shipped MNIST sample) is loaded before
timing, as the CLI loads it once for all points. The load average is printed because on a
shared machine it is the difference between 0.3 s and 3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from initsweep.build import build_initialized_model, seed_streams
    from initsweep.config import expand, validate
    from initsweep.probe import fixed_batch, probe_model
    from initsweep.theory import InitRecipe, predict
    from initsweep.train import splits_for

    cfg = validate({"name": "bench", "data": {"dataset": "mnist-sample"},
                    "model": {"arch": "plain", "depth": args.depth, "width": args.width, "init": "he",
                              "activation": "relu"}})
    spec = expand(cfg).runs[0]
    _, splits = splits_for(spec, torch.device("cpu"))
    x, y = fixed_batch(splits.train_x, splits.train_y, args.batch_size)
    recipe = InitRecipe.from_spec(spec)

    def point() -> tuple[float, float, float, str]:
        t0 = time.perf_counter()
        model = build_initialized_model(spec, torch.Generator().manual_seed(seed_streams(spec.seed)[0]))
        t1 = time.perf_counter()
        result = probe_model(model, x, y, recipe)
        t2 = time.perf_counter()
        predict(model, x, recipe)  # timed again alone: its share of probe_model
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, result.verdict

    warm = point()
    runs = [point() for _ in range(args.repeats)]
    totals = [b + p for b, p, _, _ in runs]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"probe point: plain depth {args.depth} width {args.width}, he + relu, {len(x)} images, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {load:.2f}")
    print(f"  warm-up (first point): {warm[0] + warm[1]:.3f} s")
    print(f"  per point over {args.repeats}: median {statistics.median(totals):.3f} s, min {min(totals):.3f} s")
    print(f"    build + init  median {statistics.median(r[0] for r in runs):.3f} s")
    print(f"    probe_model   median {statistics.median(r[1] for r in runs):.3f} s "
          f"(of which the prediction {statistics.median(r[2] for r in runs):.3f} s)")
    print(f"  verdict: {runs[-1][3]}")


if __name__ == "__main__":
    main()
