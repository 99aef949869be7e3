"""Model builders: ``arch`` + depth/width/activation -> ``nn.Module``.

Every model is a stack of :class:`Block` (weight layer -> optional norm -> activation ->
optional pool) followed by a linear classifier ``head``. The uniform shape is what lets
the probe hook every layer's pre-activation and activation the same way for all archs.

* ``plain``: ``depth`` 3x3 convs of ``width`` channels, no normalization by default
  (normalization hides init effects). The first conv has stride 2 (28 -> 14), the conv at
  index ``max(1, depth // 4)`` has stride 2 (14 -> 7), so a quarter of the layers run at
  14x14 and the rest at 7x7: a 30-layer net stays affordable on a 2-core CPU. The head is
  linear, on the globally average-pooled features (``head: gap``, the default) or on the
  flattened 7x7 map (``head: flatten``). Measured on the MNIST sample, width 16, 2 epochs
  of Adam 1e-3: with ``gap`` even He + ReLU at depth 2 reaches only 27% test accuracy,
  so good and bad inits are hard to tell apart; with ``flatten`` it reaches 83% (87% at
  depth 20) while LeCun-uniform-like ``uniform_inv_sqrt_n`` + ReLU stalls at 10% at
  depth 20 — the default study uses ``flatten``. ``padding: zeros`` (PyTorch's default) loses signal at
  the borders at every layer; ``padding: circular`` keeps every tap inside the image.
* ``tutorial``: the tutorial's Keras CNN exactly (valid padding, as Keras' default):
  Conv 32@3x3 -> MaxPool 2 -> Conv 64@3x3 -> MaxPool 2 -> Conv 64@3x3 -> Flatten ->
  Dense 64 -> Dense 10, the chosen activation in place of every ReLU. Depth and width do
  not apply.
* ``mlp``: ``depth`` hidden layers of ``width`` units on the flattened image (Glorot &
  Bengio 2010 style studies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
N_CLASSES = 10
ARCHS = ("plain", "tutorial", "mlp")


class Block(nn.Module):
    """``pool(act(norm(layer(x))))``; ``flatten_input`` flattens images for a dense layer."""

    def __init__(self, layer: nn.Module, act: nn.Module, norm: nn.Module | None = None,
                 pool: nn.Module | None = None, flatten_input: bool = False):
        super().__init__()
        self.flatten_input = flatten_input
        self.layer = layer
        self.norm = norm if norm is not None else nn.Identity()
        self.act = act
        self.pool = pool if pool is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten_input:
            x = torch.flatten(x, 1)
        return self.pool(self.act(self.norm(self.layer(x))))


class Net(nn.Module):
    """Blocks, then a readout (global average pooling or nothing), then the linear head."""

    def __init__(self, blocks: list[Block], head: nn.Linear, global_pool: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.global_pool = global_pool
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.global_pool:
            x = x.mean(dim=(2, 3))  # [B, C, H, W] -> [B, C]
        return self.head(torch.flatten(x, 1))


@dataclass(frozen=True)
class ModelShape:
    """What a model costs, computed without allocating its weights."""

    n_weight_layers: int  # conv/linear layers, head included
    n_params: int
    macs_per_sample: int  # multiply-accumulates of one forward pass


def _plain(depth: int, width: int, act: Callable[[], nn.Module], norm: str, padding: str, head: str) -> Net:
    second_stride_at = max(1, depth // 4)
    blocks = []
    for i in range(depth):
        stride = 2 if i in (0, second_stride_at) else 1
        conv = nn.Conv2d(IMAGE_SHAPE[0] if i == 0 else width, width, 3, stride=stride,
                         padding=1, padding_mode=padding)
        bn = nn.BatchNorm2d(width) if norm == "batch" else None
        blocks.append(Block(conv, act(), bn))
    if head == "gap":
        return Net(blocks, nn.Linear(width, N_CLASSES), global_pool=True)
    side = 14 if depth == 1 else 7
    return Net(blocks, nn.Linear(width * side * side, N_CLASSES), global_pool=False)


def _tutorial(act: Callable[[], nn.Module], norm: str) -> Net:
    bn = (lambda c: nn.BatchNorm2d(c)) if norm == "batch" else (lambda c: None)
    blocks = [
        Block(nn.Conv2d(1, 32, 3), act(), bn(32), nn.MaxPool2d(2)),   # 28 -> 26 -> 13
        Block(nn.Conv2d(32, 64, 3), act(), bn(64), nn.MaxPool2d(2)),  # 13 -> 11 -> 5
        Block(nn.Conv2d(64, 64, 3), act(), bn(64)),                   # 5 -> 3
        Block(nn.Linear(64 * 3 * 3, 64), act(), flatten_input=True),
    ]
    return Net(blocks, nn.Linear(64, N_CLASSES), global_pool=False)


def _mlp(depth: int, width: int, act: Callable[[], nn.Module], norm: str) -> Net:
    blocks = []
    for i in range(depth):
        fan_in = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2] if i == 0 else width
        bn = nn.BatchNorm1d(width) if norm == "batch" else None
        blocks.append(Block(nn.Linear(fan_in, width), act(), bn, flatten_input=(i == 0)))
    return Net(blocks, nn.Linear(width, N_CLASSES), global_pool=False)


def build_model(
    arch: str, *, depth: int | None, width: int | None, activation: Callable[[], nn.Module],
    norm: str = "none", padding: str = "zeros", head: str = "gap",
) -> Net:
    """Build an uninitialized model (weights as PyTorch leaves them; see ``inits.initialize``).

    ``activation`` is a zero-argument factory, called once per block so each block owns its
    own module (hooks can then tell the layers apart).
    """
    if arch == "plain":
        return _plain(depth, width, activation, norm, padding, head)
    if arch == "tutorial":
        return _tutorial(activation, norm)
    if arch == "mlp":
        return _mlp(depth, width, activation, norm)
    raise ValueError(f"unknown arch {arch!r} (valid: {', '.join(ARCHS)})")


def measure_shape(arch: str, *, depth: int | None, width: int | None, norm: str = "none",
                  padding: str = "zeros", head: str = "gap") -> ModelShape:
    """Count layers, parameters and forward MACs on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        model = build_model(arch, depth=depth, width=width, activation=nn.Identity, norm=norm,
                            padding=padding, head=head)
    macs = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        # one MAC per weight feeding each output element; weight[0] is one output's weights
        macs += output[0].numel() * module.weight[0].numel()

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        model(torch.empty((1, *IMAGE_SHAPE), device="meta"))
    for h in handles:
        h.remove()
    n_params = sum(p.numel() for p in model.parameters())
    return ModelShape(n_weight_layers=len(layers), n_params=n_params, macs_per_sample=macs)
