"""The baseline: what a user writes from pytorch/examples' MNIST script, looped over a grid.

A torchvision-style ``Dataset`` that turns each image into a PIL image and applies
``ToTensor()`` + ``Normalize`` per item, a ``DataLoader``, Adam, and one run after another
in one process (``--point I`` runs grid point I only: the "shell loop" launches this once
per point). Same data, model, init, epochs and batch size as the initsweep side of
``bench_sweep.py``, with torch's own activation modules (``nn.Tanh``, not initsweep's
numpy-backed tanh); it prints one JSON line with its counts and timings.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from initsweep.activations import get_activation
from initsweep.data import DataSource, SAMPLE_PATH, load_raw
from initsweep.inits import get_init, initialize
from initsweep.models import build_model
from loop_report import print_report, torch_activation


class NumpyMNIST(Dataset):
    """Like torchvision.datasets.MNIST: a PIL image per item, transformed on the fly."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def grid(points: list[str]) -> list[tuple[str, str, int]]:
    """``init:activation:seed`` strings -> tuples."""
    out = []
    for p in points:
        init, act, seed = p.split(":")
        out.append((init, act, int(seed)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", nargs="+", required=True, help="init:activation:seed ...")
    parser.add_argument("--point", type=int, default=None, help="run only this index of --points")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    # pytorch/examples' CUDA settings: a loader worker and pinned memory
    loader_kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = load_raw(DataSource("mnist-sample", "mnist-sample", str(SAMPLE_PATH)))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_x, train_y = raw.train_x[:args.train_limit], raw.train_y[:args.train_limit]
    test_x, test_y = raw.test_x[:args.test_limit], raw.test_y[:args.test_limit]
    train_loader = DataLoader(NumpyMNIST(train_x, train_y, transform), batch_size=args.batch_size, shuffle=True,
                              **loader_kwargs)
    test_loader = DataLoader(NumpyMNIST(test_x, test_y, transform), batch_size=1000, **loader_kwargs)
    points = grid(args.points)
    if args.point is not None:
        points = [points[args.point]]
    samples, train_seconds, accs = 0, 0.0, []
    for init, act_name, seed in points:
        torch.manual_seed(seed)
        act = get_activation(act_name)
        model = build_model("tutorial", depth=None, width=None, activation=lambda: torch_activation(act.build({})))
        initialize(model, init=init, init_params=get_init(init).resolve({}), auto_gain=act.gain({}))
        model = model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(args.epochs):
            model.train()
            t = time.perf_counter()
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                samples += len(y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            train_seconds += time.perf_counter() - t
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in test_loader:
                    x, y = x.to(device), y.to(device)
                    correct += (model(x).argmax(1) == y).sum().item()
            accs.append(correct / len(test_y))
    print_report(len(points), samples, train_seconds, t0, accs)


if __name__ == "__main__":
    main()
