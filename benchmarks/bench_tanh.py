"""torch's CPU tanh against initsweep's (numpy's forward, torch's backward), side by side.

    .venv/bin/python benchmarks/bench_tanh.py [--threads 1] [--repeats 30]

The tensor is the tutorial CNN's first activation for a batch of 128: [128, 32, 28, 28],
channels_last, as a worker trains it. Timed per call (the median of ``--repeats``, after one
warm-up), forward alone and forward + backward, in float32 and bfloat16, each version
interleaved with the other so that load on the machine hits both alike. Prints the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from initsweep.fast_tanh import numpy_path, tanh
from initsweep.provenance import bf16_cpu_flags, cpu_model, cpuinfo_text


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; bf16 flags: {', '.join(bf16_cpu_flags(cpuinfo_text())) or 'none'}; "
          f"torch {torch.__version__}; {torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f}")
    print(f"{'dtype':9} {'pass':17} {'torch ms':>9} {'initsweep ms':>13} {'speed-up':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(128, 32, 28, 28).to(dtype=dtype, memory_format=torch.channels_last)
        assert numpy_path(x), "initsweep's tanh would not take the numpy path here"
        grad = torch.randn_like(x)

        def forward(f):
            return lambda: f(x)

        def forward_backward(f):
            leaf = x.detach().requires_grad_(True)
            return lambda: f(leaf).backward(grad)

        for name, make in (("forward", forward), ("forward+backward", forward_backward)):
            calls = {"torch": make(torch.tanh), "initsweep": make(tanh)}
            times: dict[str, list[float]] = {k: [] for k in calls}
            for fn in calls.values():
                fn()  # warm-up
            for _ in range(args.repeats):
                for key, fn in calls.items():
                    times[key].append(_timed(fn))
            ours, theirs = statistics.median(times["initsweep"]), statistics.median(times["torch"])
            print(f"{str(dtype).removeprefix('torch.'):9} {name:17} {theirs * 1e3:9.2f} {ours * 1e3:13.2f} "
                  f"{theirs / ours:8.1f}x")


if __name__ == "__main__":
    main()
