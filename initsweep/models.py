"""Model builders: ``arch`` + depth/width/activation -> ``nn.Module``.

Every model is a stack of :class:`Block` (weight layer -> optional norm -> activation ->
optional pool) followed by a linear classifier ``head``. The uniform shape is what lets
the probe hook every layer's pre-activation and activation the same way for all archs.

* ``plain``: ``depth`` 3x3 convs of ``width`` channels, no normalization by default
  (normalization hides init effects). The first conv has stride 2 (28 -> 14), the conv at
  index ``max(1, depth // 4)`` has stride 2 (14 -> 7), so a quarter of the layers run at
  14x14 and the rest at 7x7: a 30-layer net stays affordable on a 2-core CPU. The head is
  linear, on the globally average-pooled features (``head: gap``) or on the flattened 7x7
  map (``head: flatten``). Measured on the MNIST sample, width 16, 2 epochs of Adam 1e-3,
  seed 0, ReLU: with ``gap`` every run stays at 10-19% test accuracy (He 19% at depth 2,
  ``uniform_inv_sqrt_n`` 10% at depth 20), so good and bad inits cannot be told apart in a
  short study; with ``flatten`` He reaches 83% (81% at depth 20) while ``uniform_inv_sqrt_n``
  stalls at 10% at depth 20. So every shipped study of ``plain`` sets ``head: flatten``.
  ``gap`` stays the *default* only because a run's id hashes its resolved settings: a new
  default would change the id of every stored run of a config that omits ``head`` (and of
  every ``mlp``/``tutorial`` run, whose unused ``head`` is pinned to the default).
  ``padding: zeros`` (PyTorch's default) loses signal at
  the borders at every layer; ``padding: circular`` keeps every tap inside the image.
* ``tutorial``: the tutorial's Keras CNN exactly (valid padding, as Keras' default):
  Conv 32@3x3 -> MaxPool 2 -> Conv 64@3x3 -> MaxPool 2 -> Conv 64@3x3 -> Flatten ->
  Dense 64 -> Dense 10, the chosen activation in place of every ReLU. Depth and width do
  not apply.
* ``mlp``: ``depth`` hidden layers of ``width`` units on the flattened image (Glorot &
  Bengio 2010 style studies).

Each arch is one :class:`Arch` registry entry: its builder and the facts the rest of the
code asks about it (which model settings it reads, whether it is a conv net), so a new
architecture is one ``_register`` call and config validation, run ids, training and the
probe follow without naming it anywhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .registry import unknown_name_error

IMAGE_SHAPE = (1, 28, 28)
N_CLASSES = 10
# The model settings (config.ModelConfig fields) a builder may take besides the activation
MODEL_SETTINGS = ("depth", "width", "norm", "padding", "head")


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


@dataclass(frozen=True)
class Arch:
    """One architecture: its builder and what the rest of the code asks about it.

    ``builder`` takes ``activation`` (a zero-argument module factory) and, as keywords,
    exactly the settings in ``uses``; the others do not change the model, so a run's
    identity pins them to their defaults (``config``) and the probe's titles leave them out.
    ``channels_last`` marks a conv net, which trains faster in that memory format on the CPU.
    """

    name: str
    builder: Callable[..., Net]
    description: str
    uses: tuple[str, ...]  # a subset of MODEL_SETTINGS
    channels_last: bool = False

    @property
    def unused(self) -> tuple[str, ...]:
        """The model settings this arch ignores, in ``MODEL_SETTINGS`` order."""
        return tuple(s for s in MODEL_SETTINGS if s not in self.uses)

    @property
    def fixed_shape(self) -> bool:
        """Neither depth nor width changes the model: its size need not be checked per point."""
        return "depth" not in self.uses and "width" not in self.uses


_REGISTRY: dict[str, Arch] = {}


def _register(entry: Arch) -> None:
    unknown = set(entry.uses) - set(MODEL_SETTINGS)
    if unknown:
        raise ValueError(f"arch {entry.name!r} uses unknown settings {sorted(unknown)} (valid: {MODEL_SETTINGS})")
    _REGISTRY[entry.name] = entry


def get_arch(name: str) -> Arch:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise unknown_name_error("arch", name, _REGISTRY) from None


def list_archs() -> list[Arch]:
    """Every registered arch, in registration order (read at call time, so later entries count)."""
    return list(_REGISTRY.values())


def _plain(depth: int, width: int, activation: Callable[[], nn.Module], norm: str, padding: str,
           head: str) -> Net:
    second_stride_at = max(1, depth // 4)
    blocks = []
    for i in range(depth):
        stride = 2 if i in (0, second_stride_at) else 1
        conv = nn.Conv2d(IMAGE_SHAPE[0] if i == 0 else width, width, 3, stride=stride,
                         padding=1, padding_mode=padding)
        bn = nn.BatchNorm2d(width) if norm == "batch" else None
        blocks.append(Block(conv, activation(), bn))
    if head == "gap":
        return Net(blocks, nn.Linear(width, N_CLASSES), global_pool=True)
    side = 14 if depth == 1 else 7
    return Net(blocks, nn.Linear(width * side * side, N_CLASSES), global_pool=False)


def _tutorial(activation: Callable[[], nn.Module], norm: str) -> Net:
    bn = (lambda c: nn.BatchNorm2d(c)) if norm == "batch" else (lambda c: None)
    blocks = [
        Block(nn.Conv2d(1, 32, 3), activation(), bn(32), nn.MaxPool2d(2)),   # 28 -> 26 -> 13
        Block(nn.Conv2d(32, 64, 3), activation(), bn(64), nn.MaxPool2d(2)),  # 13 -> 11 -> 5
        Block(nn.Conv2d(64, 64, 3), activation(), bn(64)),                   # 5 -> 3
        Block(nn.Linear(64 * 3 * 3, 64), activation(), flatten_input=True),
    ]
    return Net(blocks, nn.Linear(64, N_CLASSES), global_pool=False)


def _mlp(depth: int, width: int, activation: Callable[[], nn.Module], norm: str) -> Net:
    blocks = []
    for i in range(depth):
        fan_in = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2] if i == 0 else width
        bn = nn.BatchNorm1d(width) if norm == "batch" else None
        blocks.append(Block(nn.Linear(fan_in, width), activation(), bn, flatten_input=(i == 0)))
    return Net(blocks, nn.Linear(width, N_CLASSES), global_pool=False)


# channels_last: the conv nets (train.memory_format_for says why)
_register(Arch("plain", _plain, "depth 3x3 convs of width channels, strided at two layers, linear head.",
               ("depth", "width", "norm", "padding", "head"), channels_last=True))
_register(Arch("tutorial", _tutorial, "The audited tutorial's Keras CNN, fixed shape.",
               ("norm",), channels_last=True))
_register(Arch("mlp", _mlp, "depth hidden layers of width units on the flattened image.",
               ("depth", "width", "norm")))


def build_model(
    arch: str, *, depth: int | None, width: int | None, activation: Callable[[], nn.Module],
    norm: str = "none", padding: str = "zeros", head: str = "gap",
) -> Net:
    """Build an uninitialized model (weights as PyTorch leaves them; see ``inits.initialize``).

    ``activation`` is a zero-argument factory, called once per block so each block owns its
    own module (hooks can then tell the layers apart). The arch's builder gets only the
    settings it ``uses``.
    """
    entry = get_arch(arch)
    settings = {"depth": depth, "width": width, "norm": norm, "padding": padding, "head": head}
    return entry.builder(activation=activation, **{name: settings[name] for name in entry.uses})


def measure_shape(arch: str, *, depth: int | None, width: int | None, norm: str = "none",
                  padding: str = "zeros", head: str = "gap") -> ModelShape:
    """Count layers, parameters and forward MACs without allocating a weight or running a
    forward pass: the model is built on the meta device and its shapes are walked by
    :func:`_output_shape`. (A meta-device forward would also work, but its first ``Linear``
    imports ``torch._dynamo``: 2-3 s that ``plan`` and ``run`` would pay up front.)"""
    with torch.device("meta"):
        model = build_model(arch, depth=depth, width=width, activation=nn.Identity, norm=norm,
                            padding=padding, head=head)
    shape: tuple[int, ...] = IMAGE_SHAPE
    macs = 0
    for block in model.blocks:
        if block.flatten_input:
            shape = (math.prod(shape),)
        shape = _output_shape(block.layer, shape)
        # one MAC per weight feeding each output element; weight[0] is one output's weights
        macs += math.prod(shape) * block.layer.weight[0].numel()
        shape = _output_shape(block.pool, shape)  # norm and activation keep the shape
    macs += model.head.out_features * model.head.in_features
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    n_params = sum(p.numel() for p in model.parameters())
    return ModelShape(n_weight_layers=len(layers), n_params=n_params, macs_per_sample=macs)


def _output_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-sample output shape of the layers a ``Block`` can hold (PyTorch's formulas);
    ``tests/test_models.py`` checks the walk against real forward passes."""
    if isinstance(module, nn.Identity):
        return shape
    if isinstance(module, nn.Linear):
        return (module.out_features,)
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        kernel = pair(module.kernel_size)
        stride = pair(module.stride or module.kernel_size)
        padding = pair(getattr(module, "padding", 0))
        dilation = pair(getattr(module, "dilation", 1))
        if isinstance(module.padding, str) or getattr(module, "ceil_mode", False):
            raise NotImplementedError(f"measure_shape: {module} (add its output-size rule here)")
        spatial = tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                        for size, k, s, p, d in zip(shape[1:], kernel, stride, padding, dilation))
        channels = module.out_channels if isinstance(module, nn.Conv2d) else shape[0]
        return (channels, *spatial)
    raise NotImplementedError(f"measure_shape: no output-size rule for {type(module).__name__}")
