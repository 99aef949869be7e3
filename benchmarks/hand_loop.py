"""The hand-tuned loop: what a careful person writes for this one job, the ceiling a sweep
tool is measured against.

The same grid points, data, model, init, optimizer, epochs and batch size as
``naive_mnist.py``, but the digits normalized once into in-memory tensors, batches cut by
``randperm`` index slicing, the model in channels_last, one thread (``--threads``), and
optionally bf16 autocast (``--precision bf16``) for training and evaluation. No store, no
diagnostics, no validation split; torch's own activation modules (``nn.Tanh``, not
initsweep's numpy-backed tanh), as code written without initsweep has them. ``bench_sweep.py`` starts two of these at once, each on
half of the grid: on a 2-core CPU that is the fastest layout measured (``bench_workers.py``).
It prints one JSON line with its counts and timings, like ``naive_mnist.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from initsweep.activations import get_activation
from initsweep.data import SAMPLE_PATH, DataSource, load_raw
from initsweep.inits import get_init, initialize
from initsweep.models import build_model
from loop_report import print_report, torch_activation

MEAN, STD = 0.1307, 0.3081  # the naive loop's Normalize


def tensors(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 28, 28] digits -> normalized float [n, 1, 28, 28] and int64 labels, once."""
    x = torch.tensor(images, dtype=torch.float32).div_(255).sub_(MEAN).div_(STD).unsqueeze(1)
    return x, torch.tensor(labels, dtype=torch.int64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", nargs="+", required=True, help="init:activation:seed ...")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    raw = load_raw(DataSource("mnist-sample", "mnist-sample", str(SAMPLE_PATH)))
    train_x, train_y = (t.to(device) for t in tensors(raw.train_x[:args.train_limit], raw.train_y[:args.train_limit]))
    test_x, test_y = (t.to(device) for t in tensors(raw.test_x[:args.test_limit], raw.test_y[:args.test_limit]))
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    samples, train_seconds, accs = 0, 0.0, []
    for init, act_name, seed in ((i, a, int(s)) for i, a, s in (p.split(":") for p in args.points)):
        torch.manual_seed(seed)
        act = get_activation(act_name)
        model = build_model("tutorial", depth=None, width=None, activation=lambda: torch_activation(act.build({})))
        initialize(model, init=init, init_params=get_init(init).resolve({}), auto_gain=act.gain({}))
        model = model.to(device=device, memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(args.epochs):
            model.train()
            t = time.perf_counter()
            order = torch.randperm(len(train_y), device=device)
            for i in range(0, len(order), args.batch_size):
                index = order[i:i + args.batch_size]
                opt.zero_grad(set_to_none=True)
                with autocast:
                    logits = model(train_x[index])
                F.cross_entropy(logits.float(), train_y[index]).backward()
                opt.step()
                samples += len(index)
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds += time.perf_counter() - t
            model.eval()
            correct = 0
            with torch.no_grad(), autocast:
                for i in range(0, len(test_y), 1000):
                    correct += (model(test_x[i:i + 1000]).argmax(1) == test_y[i:i + 1000]).sum().item()
            accs.append(correct / len(test_y))
    print_report(len(args.points), samples, train_seconds, t0, accs)


if __name__ == "__main__":
    main()
