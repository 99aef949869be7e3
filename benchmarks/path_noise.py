"""How far apart one run lands when it trains on another path: the numbers behind tests/tolerances.py.

    python benchmarks/path_noise.py            # about 20 s on a 2-core CPU

Trains the same specs with 1 and with 2 threads, and batched (vmapped) against alone under
SGD at lr 0.2, and prints the relative differences of their losses and the images their
accuracies differ by; beside them, what a real difference (another seed, another init)
does. Run it on a new kind of CPU before tightening or loosening a tolerance, and record
the CPU line it prints.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from initsweep.batched import run_group
from initsweep.config import expand, validate
from initsweep.train import run


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def specs(data: dict, model: dict, train: dict, inits: list):
    return expand(validate({"name": "noise", "data": data, "model": model,
                            "train": {"batch_size": 32, **train}, "grid": {"init": inits},
                            "diagnostics": {"enabled": False}})).runs


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def images(a, b) -> str:
    """Images apart on the last validation and on the test accuracy."""
    return (f"val {round(abs(a.epochs[-1].val_acc - b.epochs[-1].val_acc) * a.n_val)}/{a.n_val}, "
            f"test {round(abs(a.test_acc - b.test_acc) * a.n_test)}/{a.n_test} images")


def main() -> None:
    print(f"cpu: {cpu_model()}; torch {torch.__version__}")
    data = {"dataset": "mnist-sample", "train_limit": 1024, "test_limit": 256}
    runs = specs(data, {"arch": "plain", "width": 16, "depth": 8, "head": "flatten"},
                 {"epochs": 1, "seeds": [0, 1]}, ["he", "orthogonal"])
    torch.set_num_threads(1)
    one = [run(s, "cpu") for s in runs]
    torch.set_num_threads(2)
    two = [run(s, "cpu") for s in runs]
    for spec, a, b in zip(runs, one, two):
        print(f"1 vs 2 threads, {spec.model.init.name} seed {spec.seed}: test loss {rel(a.test_loss, b.test_loss):.1e}, "
              f"val loss {rel(a.epochs[-1].val_loss, b.epochs[-1].val_loss):.1e} relative; {images(a, b)}")
    print(f"another seed (he 0 vs 1): test loss {rel(one[0].test_loss, one[1].test_loss):.1e}, "
          f"first-epoch train loss {rel(one[0].epochs[0].train_loss, one[1].epochs[0].train_loss):.1e} relative")
    print(f"another init (he vs orthogonal): test loss {rel(one[0].test_loss, one[2].test_loss):.1e} relative")

    torch.set_num_threads(1)
    sgd = specs({**data, "train_limit": 512}, {"arch": "plain", "width": 8, "depth": 3, "head": "flatten"},
                {"epochs": 2, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9},
                ["he", {"name": "normal", "std": 1.0}, "uniform_inv_sqrt_n"])
    for spec, a, b in zip(sgd, run_group(sgd, "cpu"), [run(s, "cpu") for s in sgd]):
        if a.status != "ok" or b.status != "ok":
            print(f"batched vs alone, {spec.model.init.name}: {a.status} at step {a.diverged_step} vs "
                  f"{b.status} at step {b.diverged_step}")
            continue
        worst = max(rel(x.val_loss, y.val_loss) for x, y in zip(a.epochs, b.epochs))
        print(f"batched vs alone (SGD lr 0.2), {spec.model.init.name}: val loss {worst:.1e}, "
              f"test loss {rel(a.test_loss, b.test_loss):.1e} relative; {images(a, b)}")


if __name__ == "__main__":
    main()
