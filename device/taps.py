"""Where the graph's tensors and frozen parameters live in inference.tflite (numpy only).

The converter names every TF op of graph op X "X/...", its result "X/out", and those names survive in the
.tflite (several graph tensors fused into one .tflite tensor list all their names, ';'-separated: a conv
and its ReLU6 share one int8 tensor). So:
  tensor_index   graph tensor -> .tflite tensor (exact 'X/out' first, else the last one produced in 'X/')
  frozen weights dequantized from the producing op's filter, back in our layout (HWIO / (Cout, Cin))
  frozen GroupNorm gamma/beta: NOT from the .tflite (TensorFlow's converter drops a MUL by all-ones and an
    ADD of all-zeros, a lite branch norm's init values, so the constant may be gone); the bundle ships
    them in float32 (trainable.npz 'frozen/<name>', device/bundle.py), passed in as `frozen`
"""
from __future__ import annotations

import numpy as np

from .graph import Graph
from .requant import from_tflite_layout

OUT = "out"


def tensor_index(model_names: dict[int, str], tensor: str, produced: list[int] | None = None, *,
                 scope: bool = False) -> int | None:
    """The .tflite tensor holding graph tensor `tensor` (None when fused away). `produced`: op outputs in
    execution order (default: all tensors by index). Exact 'X/out' first, else the last produced tensor
    named 'X/out/...' (the converter folded the last op); with scope, also any 'X/...' (a lite branch's
    pool, emitted as a depthwise conv with no 'out' name)."""
    key = f"{tensor.replace(':', '_')}/{OUT}"
    order = produced if produced is not None else sorted(model_names)
    hits = [i for i in order if key in model_names.get(i, "").split(";")]
    if not hits:
        hits = [i for i in order if any(p.startswith(key + "/") or (scope and p.startswith(tensor + "/")) for p in model_names.get(i, "").split(";"))]
    return int(hits[-1]) if hits else None


def dequantize(t, q: np.ndarray) -> np.ndarray:
    """A .tflite tensor's value in float32 (per-tensor or per-channel)."""
    if t.quant is None or q.dtype == np.float32:
        return np.asarray(q, np.float32)
    shape = [1] * q.ndim
    if t.quant.per_channel:
        shape[t.quant.axis] = -1
    s = t.quant.scale.astype(np.float32).reshape(shape)
    z = t.quant.zero_point.astype(np.float32).reshape(shape)
    return ((q.astype(np.float32) - z) * s).astype(np.float32)


class Taps:
    """Graph tensor -> .tflite tensor index and producing step; frozen parameters as float32, our layouts."""

    def __init__(self, graph: Graph, engine, frozen: dict[str, np.ndarray] | None = None):
        self.graph = graph
        self.frozen = dict(frozen or {})  # the bundle's frozen GroupNorm parameters (Bundle.frozen)
        tensors = engine.tensors
        names = {t.index: t.name for t in tensors}
        m = engine.model
        produced = list(m.inputs) + [o for op in m.ops for o in op.outputs]
        self.step_of = {o: k for k, op in enumerate(m.ops) for o in op.outputs}  # tflite tensor -> producing op
        for i in m.inputs:
            self.step_of[i] = 0
        self.index: dict[str, int | None] = {}
        for name, t in graph.tensors.items():
            if not t.const:
                self.index[name] = tensor_index(names, name, produced, scope=True)
        self.index[graph.inputs[0]] = m.inputs[0]
        self.index[graph.outputs[0]] = m.outputs[0]
        self._engine = engine
        self._names = names

    def tflite_op(self, graph_tensor: str):
        """The .tflite op producing graph tensor's .tflite tensor."""
        i = self.index.get(graph_tensor)
        if i is None or i not in self.step_of:
            raise KeyError(f"graph tensor '{graph_tensor}' has no .tflite tensor")
        return self._engine.model.ops[self.step_of[i]]

    def value(self, graph_tensor: str, env: dict) -> np.ndarray:
        i = self.index[graph_tensor]
        return dequantize(self._engine.tensors[i], env[i])

    def frozen_param(self, op, pos: int) -> np.ndarray:
        """Value of op.inputs[pos] (a frozen parameter) in our layout: a conv/FC weight or bias read from the
        .tflite, a GroupNorm gamma/beta as the bundle ships it."""
        g = self.graph
        pname = op.inputs[pos]
        shape = g.tensors[pname].shape
        if op.kind in ("conv2d", "fully_connected"):
            top = self.tflite_op(op.outputs[0])
            t = self._engine.tensors[top.inputs[pos]]
            v = dequantize(t, t.data)
            kind = "conv_weight" if op.kind == "conv2d" and pos == 1 else "plain"
            v = from_tflite_layout(v, kind, shape)
        elif op.kind == "group_norm":
            if pname not in self.frozen:
                raise KeyError(f"frozen GroupNorm parameter '{pname}': not shipped in the bundle (trainable.npz "
                               f"'frozen/{pname}'; bundles before format version 2 lack it: re-convert)")
            v = np.asarray(self.frozen[pname], np.float32).reshape(-1)
        else:
            raise KeyError(f"op {op.name}: no frozen parameters")
        if tuple(v.shape) != tuple(shape):
            raise KeyError(f"frozen parameter '{pname}': found {v.shape}, the graph says {shape}")
        return np.ascontiguousarray(v, np.float32)
