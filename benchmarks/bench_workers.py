"""Processes or threads: the training rate of one model on this CPU, every layout side by side.

    .venv/bin/python benchmarks/bench_workers.py              # tutorial CNN, about 1 minute
    .venv/bin/python benchmarks/bench_workers.py --seconds 2  # quicker, noisier

Trains the tutorial CNN (batch 128, Adam, random MNIST-shaped data: the rate does not depend
on the pixel values) for a fixed time in each layout and prints samples/s:

* 1 process x N threads, contiguous (NCHW) and channels_last;
* N processes x 1 thread, channels_last, all at once (what ``initsweep run`` does by default).

Why this exists: the pool's default (one single-threaded worker per core) rests on it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def train_rate(threads: int, channels_last: bool, seconds: float, start=None) -> float:
    """Training samples/s of the tutorial CNN for ``seconds`` after a short warm-up."""
    import torch
    from torch import nn

    from initsweep.models import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model("tutorial", depth=None, width=None, activation=nn.ReLU).to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    if start is not None:
        start.wait()  # every process measures over the same interval
    steps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        step()
        steps += 1
    return 128 * steps / (time.perf_counter() - t)


def _child(seconds: float, start, out) -> None:
    out.put(train_rate(1, True, seconds, start))


def processes(n: int, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(seconds, start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    rates = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per layout")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    n = args.cores
    rows = [
        (f"1 process x {n} threads, NCHW", train_rate(n, False, args.seconds)),
        (f"1 process x {n} threads, channels_last", train_rate(n, True, args.seconds)),
        ("1 process x 1 thread, channels_last", train_rate(1, True, args.seconds)),
        (f"{n} processes x 1 thread, channels_last", processes(n, args.seconds)),
    ]
    print(f"tutorial CNN, batch 128, Adam; {args.seconds:g} s per layout; training samples/s")
    for name, rate in rows:
        print(f"{name:<40}{rate:>9.0f}")


if __name__ == "__main__":
    main()
