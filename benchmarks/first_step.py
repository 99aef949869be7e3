"""The least a process pays before it trains: ``import torch``, the tutorial CNN on the
shipped sample, ``torch.optim.Adam`` (its constructor imports ``torch._dynamo``). Prints the
wall-clock time (``time.time()``) at which the first training step starts (the step then
runs, as a check), which ``bench_sweep.py --startup`` subtracts from the moment it started
this script: the floor under any tool's "seconds before the first run trains" (initsweep
stores when each run's training starts, after its set-up) on the same machine.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from initsweep.activations import get_activation
from initsweep.data import SAMPLE_PATH, DataSource, load_raw
from initsweep.models import build_model


def main() -> None:
    torch.set_num_threads(1)
    raw = load_raw(DataSource("mnist-sample", "mnist-sample", str(SAMPLE_PATH)))
    x = torch.tensor(raw.train_x[:128], dtype=torch.float32).div_(255).unsqueeze(1)
    y = torch.tensor(raw.train_y[:128], dtype=torch.int64)
    act = get_activation("relu")
    model = build_model("tutorial", depth=None, width=None, activation=lambda: act.build({}))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    trains_from = time.time()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    print(f"{trains_from:.6f}", flush=True)


if __name__ == "__main__":
    main()
