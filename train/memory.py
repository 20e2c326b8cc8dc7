"""Analytic training memory in the TinyTL paper's convention (Cai et al., NeurIPS 2020).

This is the paper's accounting, reproduced so our numbers compare with its tables; it is not what a
real run allocates. It omits what a real run also needs: a GroupNorm's input (and statistics) when
gradients flow through it, gradient buffers, optimizer state. The device stage's planner counts those
(python -m device plan).

    memory = params + batch x (peak activation bytes at batch 1)

Params: every parameter, trainable at 32 bit (4 B), frozen at 8 bit (1 B), norm scale/shift included.

Activations, steps:
1. Trace one batch-1 forward: forward hooks record every leaf module (conv, linear, norm, ReLU,
   pooling, upsampling) in execution order, and a TorchFunctionMode records the functional ops run
   outside leaf modules (F.interpolate, the global mean, residual adds). Each record keeps the
   enclosing modules, so the input of an identity-shortcut block (`use_shortcut`) is known.
2. Saved for backward (32 bit): a conv/linear/norm layer saves its input only if its WEIGHT trains
   (for a norm: its scale); a ReLU/ReLU6 saves a 1-bit mask of its input when any earlier layer in
   forward order trains. Pooling, upsampling and adds save nothing.
3. Transient: input + output for conv, linear, pooling and upsampling; input only for norm and ReLU
   (in place); an add (in place) holds its operands, less the shortcut input counted in step 4.
4. current = what all earlier layers saved + this layer's transient + the input of the enclosing
   identity-shortcut block, if any. The peak is the largest current.

Sizes are bytes; MB in tables is 1e6 bytes, as in the paper (its profiler divides by 1e6): with 1e6
the six ProxylessNAS-Mobile figures land within 4% of the paper, with 2**20 they all come out 2-8% low.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import UserError
from .methods import LITE_METHODS, METHODS, trainable_names

ACT_BYTES = 4        # bytes per saved/transient activation element (32 bit)
TRAINABLE_BYTES = 4  # bytes per trainable parameter (32 bit)
FROZEN_BYTES = 1     # bytes per frozen parameter (8 bit)
MB = 10**6           # bytes; the paper's "MB" (see the module docstring)

# The TinyTL paper's figures: ProxylessNAS-Mobile with lite residual branches, 224 px, batch 8, 102 classes
# (Flowers-102), total training memory in MB (1e6 bytes).
# Our estimates land within 4%. FT-Norm+Last is the farthest (185 vs 192): the paper's code also trains the lite
# branches' GroupNorms there (it enables every norm layer), which saves their inputs too (193 MB); train/methods.py
# keeps the lite branches frozen under FT-Norm+Last.
PAPER_PROXYLESS_MB = {"ft-full": 391, "ft-norm-last": 192, "ft-last": 31, "tinytl-b": 32, "tinytl-l": 37, "tinytl-lb": 37}

_LEAF_OPS = ((nn.Conv2d, "conv"), (nn.Linear, "linear"), ((nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm), "norm"),
             ((nn.ReLU, nn.ReLU6), "relu"), ((nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d), "pool"),
             (nn.Upsample, "upsample"), ((nn.Identity, nn.Dropout, nn.Flatten), None))  # None: no memory of its own
_FUNC_OPS = {F.interpolate: "upsample", torch.Tensor.mean: "pool", torch.mean: "pool", F.avg_pool2d: "pool",
             F.adaptive_avg_pool2d: "pool", torch.Tensor.__add__: "add", torch.Tensor.__radd__: "add",
             torch.Tensor.add: "add", torch.add: "add"}


@dataclass(frozen=True)
class _Op:
    """One traced op at batch 1."""
    name: str                   # module path, or enclosing path + functional op ("blocks.3.lite.interpolate")
    op: str                     # conv | linear | norm | relu | pool | upsample | add
    in_bytes: int               # 32-bit bytes of the (first) input
    operand_bytes: int          # bytes of all tensor inputs, less the enclosing shortcut input (adds)
    out_bytes: int              # 32-bit bytes of the output
    in_numel: int               # elements of the input (ReLU masks)
    params: tuple[str, ...]     # full names of this op's parameters
    weight: str | None          # full name of the weight (conv/linear) or scale (norm), if any
    shortcut_bytes: int         # input bytes of the innermost enclosing identity-shortcut block, else 0


@dataclass(frozen=True)
class _Step:
    op: _Op
    saved: int                  # bytes this op saves for backward
    transient: int              # bytes live only while this op runs
    current: int                # saved by earlier ops + transient + shortcut input


@dataclass(frozen=True)
class MemoryEstimate:
    method: str
    trainable_params: int
    param_bytes: int            # trainable * 4 + frozen * 1
    activation_bytes: int       # batch x peak at batch 1
    peak_layer: str             # where the batch-1 peak occurs

    @property
    def total_bytes(self) -> int:
        return self.param_bytes + self.activation_bytes


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * ACT_BYTES


class _Tracer(TorchFunctionMode):
    """Records leaf modules (via hooks) and functional ops outside leaf modules, in execution order."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.ops, self.stack, self.shortcut_inputs = [], [], []
        self.names = {m: n for n, m in model.named_modules()}
        self.counts: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        kind = _FUNC_OPS.get(func)
        if kind is not None and not (self.stack and _is_leaf(self.stack[-1])):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            base, label = self.names[self.stack[-1]] if self.stack else "", func.__name__.strip("_")
            name = f"{base}.{label}" if base else label
            self.counts[name] = self.counts.get(name, 0) + 1
            if self.counts[name] > 1:
                name = f"{name}_{self.counts[name] - 1}"
            self._record(name, kind, tensors, out, ())
        return out

    def _record(self, name: str, kind: str, inputs: list[torch.Tensor], out: torch.Tensor, params: tuple[str, ...],
                weight: str | None = None) -> None:
        shortcut = self.shortcut_inputs[-1] if self.shortcut_inputs else None
        operands = sum(_nbytes(t) for t in inputs if t is not shortcut)
        self.ops.append(_Op(name, kind, _nbytes(inputs[0]), operands, _nbytes(out), inputs[0].numel(), params, weight,
                            _nbytes(shortcut) if shortcut is not None else 0))

    def pre_hook(self, module: nn.Module, inputs: tuple) -> None:
        self.stack.append(module)
        if getattr(module, "use_shortcut", False):
            self.shortcut_inputs.append(inputs[0])

    def hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        self.stack.pop()
        if getattr(module, "use_shortcut", False):
            self.shortcut_inputs.pop()
        if not _is_leaf(module):
            return
        kind = _leaf_kind(module)
        if kind is not None:
            name = self.names[module]
            params = tuple(f"{name}.{p}" for p, _ in module.named_parameters(recurse=False))
            weight = f"{name}.weight" if module._parameters.get("weight") is not None else None
            self._record(name, kind, [t for t in inputs if isinstance(t, torch.Tensor)], out, params, weight)


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _leaf_kind(module: nn.Module) -> str | None:
    for types, kind in _LEAF_OPS:
        if isinstance(module, types):
            return kind
    raise TypeError(f"memory: no accounting rule for layer type {type(module).__name__}; add one to _LEAF_OPS")


def _trace(model: nn.Module, resolution: int) -> list[_Op]:
    """Run one batch-1 forward (eval mode, no grad) and record every op in execution order."""
    if resolution < 1:
        raise UserError(f"memory: resolution {resolution} px must be positive")
    param = next(model.parameters())
    in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.zeros(1, in_channels, resolution, resolution, device=param.device, dtype=param.dtype)
    tracer = _Tracer(model)
    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(tracer.pre_hook),
                                                     m.register_forward_hook(tracer.hook))]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), tracer:
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return tracer.ops


def _walk(ops: list[_Op], trainable: set[str]) -> list[_Step]:
    """The paper's rules (module docstring, steps 2-4) over the traced ops at batch 1."""
    steps, saved_before, upstream_trains = [], 0, False
    for op in ops:
        if op.op in ("conv", "linear", "norm"):
            saved = op.in_bytes if op.weight in trainable else 0
        elif op.op == "relu":
            saved = math.ceil(op.in_numel / 8) if upstream_trains else 0  # 1-bit mask
        else:
            saved = 0
        if op.op in ("norm", "relu"):
            transient = op.in_bytes
        elif op.op == "add":
            transient = op.operand_bytes
        else:
            transient = op.in_bytes + op.out_bytes
        steps.append(_Step(op, saved, transient, saved_before + transient + op.shortcut_bytes))
        saved_before += saved
        upstream_trains = upstream_trains or any(p in trainable for p in op.params)
    return steps


def _trainable(model: nn.Module, method: str) -> set[str]:
    names = trainable_names(model, method)  # raises UserError for an unknown method
    if method in LITE_METHODS and not any(".lite." in f".{n}" for n in names):
        raise UserError(f"method {method} trains lite residual branches, but the model has none (insert them first)")
    return set(names)


def _estimate(model: nn.Module, ops: list[_Op], method: str, batch: int) -> MemoryEstimate:
    trainable = _trainable(model, method)
    n_train = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    n_all = sum(p.numel() for p in model.parameters())
    peak = max(_walk(ops, trainable), key=lambda s: s.current)
    return MemoryEstimate(method, n_train, n_train * TRAINABLE_BYTES + (n_all - n_train) * FROZEN_BYTES,
                          batch * peak.current, peak.op.name)


def _check_batch(batch: int) -> None:
    if batch < 1:
        raise UserError(f"memory: batch {batch} must be at least 1")


def estimate(model: nn.Module, method: str, resolution: int, batch: int) -> MemoryEstimate:
    """The paper-convention training memory of `method` on `model` at `resolution` px and `batch`."""
    _check_batch(batch)
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; methods: {', '.join(METHODS)}")
    return _estimate(model, _trace(model, resolution), method, batch)


def estimate_all(model: nn.Module, resolution: int, batch: int) -> list[MemoryEstimate]:
    """All six methods, in METHODS order (one trace)."""
    _check_batch(batch)
    ops = _trace(model, resolution)
    return [_estimate(model, ops, m, batch) for m in METHODS]


def saved_bytes(model: nn.Module, method: str, resolution: int) -> dict[str, int]:
    """What the rules save for backward at batch 1, summed over all layers (not the peak), per op kind."""
    out: dict[str, int] = {}
    for s in _walk(_trace(model, resolution), _trainable(model, method)):
        out[s.op.op] = out.get(s.op.op, 0) + s.saved
    return out


def format_table(rows: list[MemoryEstimate], *, title: str) -> str:
    """A markdown table of estimates; MB = 1e6 bytes."""
    lines = [f"**{title}** (TinyTL paper's accounting; MB = 10^6 bytes)", "",
             "| method | trainable params | params MB | activations MB | total MB |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.method} | {r.trainable_params:,} | {r.param_bytes / MB:.2f} | {r.activation_bytes / MB:.2f} | "
              f"{r.total_bytes / MB:.2f} |" for r in rows]
    return "\n".join(lines)


def layer_table(model: nn.Module, method: str, resolution: int) -> str:
    """The batch-1 walk layer by layer, in bytes; '<- peak' marks the largest current."""
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; methods: {', '.join(METHODS)}")
    steps = _walk(_trace(model, resolution), _trainable(model, method))
    peak = max(steps, key=lambda s: s.current)
    width = max(len(s.op.name) for s in steps)
    lines = [f"{method}, {resolution} px, batch 1, bytes",
             f"{'layer':<{width}}  {'op':<8} {'saved':>10} {'transient':>10} {'shortcut':>10} {'current':>10}"]
    lines += [f"{s.op.name:<{width}}  {s.op.op:<8} {s.saved:>10,} {s.transient:>10,} {s.op.shortcut_bytes:>10,} "
              f"{s.current:>10,}{'  <- peak' if s is peak else ''}" for s in steps]
    return "\n".join(lines)
