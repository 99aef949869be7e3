"""``Tanh``: ``nn.Tanh`` whose forward uses numpy's SIMD tanh on the CPU.

Why: torch's CPU tanh kernel (SLEEF's 1-ULP ``tanhf``) is the slowest op of a tanh net on
the CPU. One thread, the tutorial CNN's first activation ([128, 32, 28, 28], float32):
6.7 ms per forward call against 0.86 ms this way (``benchmarks/bench_tanh.py``); tanh runs
train about 20% faster with it (docs/performance.md). numpy's float32 tanh is within 1.4
ULP of the exact value, torch's within 0.52 (12 million points against float64 here;
``tests/test_fast_tanh.py`` holds both within 2); the two agree bit for bit on about 80%
of inputs, and differ by one or two units in the last place elsewhere: far below what a
single optimizer step changes.

The backward is torch's own: ``aten.tanh_backward(grad, y)``, the kernel ``nn.Tanh``'s
autograd uses, on the same saved output. bf16 inputs (CPU autocast) are computed in float32
and rounded to bf16, as torch's bf16 kernel does internally.

Everything else takes torch's kernel unchanged: other devices and dtypes, tensors under a
``torch.func`` transform (``vmap``: numpy cannot see batched tensors), ``torch.compile``
tracing, tensor subclasses, and processes with more than ``NUMPY_MAX_THREADS`` intra-op
threads (numpy's tanh runs on one thread; torch's spreads over all of them).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# numpy's one thread is ~8x torch's one thread here; above this many threads torch's kernel
# may catch up on a large machine, so it is left to torch.
NUMPY_MAX_THREADS = 8
_NUMPY_DTYPES = (torch.float32, torch.bfloat16)
_is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
_is_compiling = getattr(torch.compiler, "is_compiling", None)


def numpy_path(x: torch.Tensor) -> bool:
    """Whether ``Tanh`` computes ``x`` with numpy (see the module docstring for when not)."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES
            and _is_wrapped is not None and not _is_wrapped(x)
            and _is_compiling is not None and not _is_compiling()
            and torch.get_num_threads() <= NUMPY_MAX_THREADS)


class _NumpyTanh(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        x32 = x.detach() if x.dtype == torch.float32 else x.detach().float()
        y = torch.empty_like(x32)  # the input's memory format (channels_last stays channels_last)
        np.tanh(x32.numpy(), out=y.numpy())
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``torch.tanh(x)``, through numpy where ``numpy_path(x)``."""
    return _NumpyTanh.apply(x) if numpy_path(x) else torch.tanh(x)


class Tanh(nn.Tanh):
    """``nn.Tanh`` (an instance of it, for hooks and ``isinstance``) with ``tanh`` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh(x)
