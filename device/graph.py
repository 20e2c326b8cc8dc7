"""The project's one graph description, shared by convert/, device/ and firmware_sim/ (numpy + json only).

A Graph is tensors (name -> Tensor spec) plus ops in execution order. Activations are NHWC. Parameter
layouts (the values live beside the graph, in an .npz keyed by tensor name):
  conv2d weight   (KH, KW, Cin / groups, Cout)  "HWIO"; bias (Cout,)
  fully_connected weight (Cout, Cin)             as TFLite; bias (Cout,)
  group_norm gamma, beta (C,)
`verify(graph)` checks references, order, dtypes and every op's output shape; it runs at each stage
boundary (after building, before emitting TF, after loading a bundle).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DTYPES = ("float32", "int8", "int32", "uint8")


class GraphError(ValueError):
    """A graph that breaks the description's rules; the message names the op or tensor."""


@dataclass(frozen=True)
class Quant:
    scale: tuple[float, ...]      # one per tensor, or one per channel along `axis`
    zero_point: tuple[int, ...]   # same length as scale
    axis: int = 0                 # the channel axis when per-channel (len(scale) > 1)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]        # activations (N, H, W, C); parameters per the layouts above
    dtype: str = "float32"
    quant: Quant | None = None
    trainable: bool = False       # learns on the device
    const: bool = False           # a parameter (value in the params .npz), not an activation


@dataclass(frozen=True)
class Op:
    kind: str                     # one of OPS
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""                # where it came from (the PyTorch module path)


@dataclass(frozen=True)
class Graph:
    tensors: dict[str, Tensor]
    ops: tuple[Op, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def producer(self, tensor: str) -> Op | None:
        return next((op for op in self.ops if tensor in op.outputs), None)

    def consumers(self, tensor: str) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]

    def params(self) -> list[Tensor]:
        return [t for t in self.tensors.values() if t.const]


def _conv_out(size: int, k: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    return (size + pad_lo + pad_hi - k) // stride + 1


def _infer(g: Graph, op: Op) -> list[tuple[int, ...]]:
    """Output shapes of `op` from its input shapes and attrs (the single definition of each op)."""
    s = [g.tensors[i].shape for i in op.inputs]
    a = op.attrs
    if op.kind == "conv2d":  # inputs x, w, b; attrs stride, pad (top, bottom, left, right), groups, act
        (n, h, w, c), (kh, kw, cig, co) = s[0], s[1]
        if c != cig * a["groups"] or co % a["groups"] or s[2] != (co,):
            raise GraphError(f"op {op.name}: conv2d weight {s[1]} / bias {s[2]} do not fit input {s[0]} with groups {a['groups']}")
        t, b, l, r = a["pad"]
        return [(n, _conv_out(h, kh, a["stride"], t, b), _conv_out(w, kw, a["stride"], l, r), co)]
    if op.kind == "avg_pool2d":  # 2x2 stride 2, ceil mode: a partial last window averages what it covers
        n, h, w, c = s[0]
        k = a["kernel"]
        return [(n, math.ceil((h - k) / k) + 1, math.ceil((w - k) / k) + 1, c)]
    if op.kind == "group_norm":  # inputs x, gamma, beta; attrs groups, eps
        if s[0][3] % a["groups"] or s[1] != (s[0][3],) or s[2] != (s[0][3],):
            raise GraphError(f"op {op.name}: group_norm of {s[0]} with {a['groups']} groups, gamma {s[1]}")
        return [s[0]]
    if op.kind in ("relu", "relu6"):
        return [s[0]]
    if op.kind == "resize_bilinear":  # half-pixel centres (PyTorch align_corners=False)
        n, _, _, c = s[0]
        return [(n, a["size"][0], a["size"][1], c)]
    if op.kind == "add":
        if s[0] != s[1]:
            raise GraphError(f"op {op.name}: add of {s[0]} and {s[1]}")
        return [s[0]]
    if op.kind == "mean":  # global average over H, W
        return [(s[0][0], s[0][3])]
    if op.kind == "fully_connected":  # inputs x (N, Cin), w (Cout, Cin), b (Cout,)
        if s[1][1] != s[0][1] or s[2] != (s[1][0],):
            raise GraphError(f"op {op.name}: fully_connected weight {s[1]} / bias {s[2]} do not fit input {s[0]}")
        return [(s[0][0], s[1][0])]
    raise GraphError(f"op {op.name}: unknown kind '{op.kind}'")


OPS = ("conv2d", "avg_pool2d", "group_norm", "relu", "relu6", "resize_bilinear", "add", "mean", "fully_connected")


def verify(g: Graph, params: dict[str, np.ndarray] | None = None) -> Graph:
    """Raise GraphError unless g is well formed (and params, if given, match the parameter specs)."""
    for name, t in g.tensors.items():
        if name != t.name:
            raise GraphError(f"tensor '{name}' is stored under the name '{t.name}'")
        if t.dtype not in DTYPES:
            raise GraphError(f"tensor '{name}': dtype {t.dtype} not in {DTYPES}")
        if any(not isinstance(d, int) or d < 1 for d in t.shape):
            raise GraphError(f"tensor '{name}': bad shape {t.shape}")
        if t.quant is not None:
            q = t.quant
            if len(q.scale) != len(q.zero_point) or (len(q.scale) > 1 and len(q.scale) != t.shape[q.axis]):
                raise GraphError(f"tensor '{name}': {len(q.scale)} scales / {len(q.zero_point)} zero points for shape {t.shape} axis {q.axis}")
    ready = {n for n, t in g.tensors.items() if t.const} | set(g.inputs)
    for n in g.inputs + g.outputs:
        if n not in g.tensors:
            raise GraphError(f"graph input/output '{n}' is not a tensor")
    for op in g.ops:
        if op.kind not in OPS:
            raise GraphError(f"op {op.name}: unknown kind '{op.kind}'")
        for i in op.inputs:
            if i not in g.tensors:
                raise GraphError(f"op {op.name}: input '{i}' is not a tensor")
            if i not in ready:
                raise GraphError(f"op {op.name}: input '{i}' is used before it is produced")
        shapes = _infer(g, op)
        for o, shape in zip(op.outputs, shapes):
            if o not in g.tensors:
                raise GraphError(f"op {op.name}: output '{o}' is not a tensor")
            if o in ready:
                raise GraphError(f"op {op.name}: output '{o}' is produced twice (or is a parameter/input)")
            if g.tensors[o].shape != shape:
                raise GraphError(f"op {op.name}: output '{o}' declared {g.tensors[o].shape}, the op gives {shape}")
            ready.add(o)
    for n in g.outputs:
        if n not in ready:
            raise GraphError(f"graph output '{n}' is never produced")
    if params is not None:
        for t in g.params():
            if t.name not in params:
                raise GraphError(f"parameter '{t.name}' has no value")
            v = params[t.name]
            if tuple(v.shape) != t.shape or str(v.dtype) != t.dtype:
                raise GraphError(f"parameter '{t.name}': value {v.dtype}{tuple(v.shape)}, spec {t.dtype}{t.shape}")
    return g


def to_dict(g: Graph) -> dict[str, Any]:
    return {"tensors": [asdict(t) for t in g.tensors.values()], "ops": [asdict(op) for op in g.ops],
            "inputs": list(g.inputs), "outputs": list(g.outputs)}


def from_dict(d: dict[str, Any]) -> Graph:
    def tensor(t: dict) -> Tensor:
        q = t.get("quant")
        quant = Quant(tuple(q["scale"]), tuple(q["zero_point"]), q.get("axis", 0)) if q else None
        return Tensor(t["name"], tuple(t["shape"]), t.get("dtype", "float32"), quant, bool(t.get("trainable")), bool(t.get("const")))
    def attrs(a: dict) -> dict:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}
    tensors = {t["name"]: tensor(t) for t in d["tensors"]}
    ops = tuple(Op(o["kind"], tuple(o["inputs"]), tuple(o["outputs"]), attrs(o.get("attrs", {})), o.get("name", "")) for o in d["ops"])
    return Graph(tensors, ops, tuple(d["inputs"]), tuple(d["outputs"]))


def dumps(g: Graph) -> str:
    return json.dumps(to_dict(g), indent=1)


def loads(s: str) -> Graph:
    return verify(from_dict(json.loads(s)))


# ---- parameter queries shared by convert/, device/ and firmware_sim/ ---------------------------------

def unit_of(name: str) -> str:
    """The unit a parameter belongs to: 'stem', 'blocks.<i>', 'head' or 'classifier' (PyTorch or graph names)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def units(names: list[str]) -> list[str]:
    """The units of `names` other than the classifier, in network order (stem, blocks.0 .. blocks.N-1, head)."""
    order = {"stem": -1, "head": 10 ** 6}
    return sorted({unit_of(n) for n in names} - {"classifier"},
                  key=lambda u: int(u.split(".")[1]) if u.startswith("blocks.") else order[u])


def last_units(names: list[str], k: int) -> list[str]:
    """`--trainable-blocks last:k`: the names of the last k units, plus the classifier's (k = 0: the classifier
    alone). Biases of late layers need no gradient through early, large maps."""
    if k < 0:
        raise ValueError(f"last:{k}: k must be >= 0")
    keep = set(units(names)[len(units(names)) - k:]) if k else set()
    return [n for n in names if unit_of(n) in keep or unit_of(n) == "classifier"]


def last_k_arg(v: str) -> int:
    """argparse type of `--trainable-blocks last:K` (convert, firmware_sim)."""
    import argparse
    kind, _, k = v.partition(":")
    if kind != "last" or not k.isdigit():
        raise argparse.ArgumentTypeError(f"{v!r}: expected last:K (K >= 0 units besides the classifier), e.g. last:7")
    return int(k)


def group_norm_params(g: Graph, *, frozen_only: bool = False) -> dict[str, str]:
    """GroupNorm gamma/beta tensor -> the norm's output tensor, in graph order; frozen_only: those that do not
    train (the backward through such a norm still needs gamma: bundles ship them, device/bundle.py)."""
    return {t: op.outputs[0] for op in g.ops if op.kind == "group_norm" for t in op.inputs[1:3]
            if g.tensors[t].const and not (frozen_only and g.tensors[t].trainable)}
