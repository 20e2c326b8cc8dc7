"""Trainable sets of a bundle: which graph parameters a method trains, and the bundle with exactly a given set
trainable (what the planner, the simulator and the firmware build plan and run; numpy only).

    names = method_names(bundle, "tinytl-b")      # graph parameter names the method trains
    b = with_trainables(bundle, names)            # the same bundle, exactly those trainable
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .bundle import Bundle
from .engine import Engine
from .graph import group_norm_params, unit_of
from .taps import Taps, dequantize


def with_trainables(bundle: Bundle, names: list[str]) -> Bundle:
    """The bundle with exactly `names` trainable (graph names). Names the bundle does not train (frozen
    conv weights for FT-Full, say) get a slot from the .tflite and their dequantized value, so the device's
    own buffer rules plan them: float32 parameter, gradient and optimizer state in SRAM, input saved.
    A GroupNorm parameter the bundle trains but `names` leaves out joins Bundle.frozen with its shipped value
    (the backward through a frozen GroupNorm needs its gamma)."""
    g = bundle.graph
    have = {p["name"]: p for p in bundle.spec["params"]}
    missing = [n for n in names if n not in g.tensors or not g.tensors[n].const]
    if missing:
        raise KeyError(f"not parameters of the bundle's graph: {missing[:3]}")
    extra = [n for n in names if n not in have]
    values = dict(bundle.trainable)
    params = []
    if extra:
        eng = Engine(bundle.tflite_path)
        taps = Taps(g, eng, bundle.frozen)
        users = {i: (op, pos) for op in g.ops for pos, i in enumerate(op.inputs)}
    for n in names:
        if n in have:
            params.append(have[n])
            continue
        op, pos = users[n]
        shape = g.tensors[n].shape
        slot, values[n] = None, bundle.frozen.get(n, np.zeros(shape, np.float32))  # None: planned only (no place in the int8 graph)
        if op.kind in ("conv2d", "fully_connected"):
            top = taps.tflite_op(op.outputs[0])
            ti = top.inputs[pos] if pos < len(top.inputs) else -1
            if ti >= 0 and eng.tensors[ti].data is not None:
                values[n] = taps.frozen_param(op, pos) if pos == 1 else _bias_value(eng, ti, shape)
                slot = {"op": eng.model.ops.index(top), "input": pos, "tensor": ti, "dtype": np.dtype(eng.tensors[ti].dtype).name,
                        "layout": "conv_weight" if op.kind == "conv2d" and pos == 1 else "plain"}
        params.append({"name": n, "shape": list(shape), "dtype": "float32", "op": op.outputs[0], "slot": slot})
    keep = set(names)
    tensors = {k: dataclasses.replace(t, trainable=k in keep) for k, t in g.tensors.items()}
    graph = dataclasses.replace(g, tensors=tensors)
    spec = dict(bundle.spec, params=params)
    manifest = dict(bundle.manifest, trainable=[{"name": p["name"], "shape": p["shape"], "dtype": "float32"} for p in params])
    norm_params = group_norm_params(g)
    frozen = dict(bundle.frozen) | {n: v for n, v in bundle.trainable.items() if n not in keep and n in norm_params}
    return Bundle(bundle.path, manifest, graph, {n: values[n] for n in names}, spec, frozen)


def _bias_value(eng, ti: int, shape) -> np.ndarray:
    t = eng.tensors[ti]
    return np.asarray(dequantize(t, t.data), np.float32).reshape(shape)


def plan_only(bundle: Bundle) -> list[str]:
    """Trainable names without a place in the int8 graph: such a bundle can be planned, not run."""
    return [p["name"] for p in bundle.spec["params"] if p["slot"] is None]


def method_names(bundle: Bundle, method: str) -> list[str]:
    """Graph parameter names a method trains on this bundle's graph."""
    g = bundle.graph
    params = [n for n, t in g.tensors.items() if t.const]
    head = [n for n in params if unit_of(n) == "classifier"]
    if method == "ft-last":
        return head
    if method == "tinytl-b":
        return [n for n in params if n.endswith(".bias") and ".lite." not in n and unit_of(n) != "classifier"] + head
    if method == "tinytl-lb":
        return [n for n in params if (n.endswith(".bias") and ".lite." not in n and unit_of(n) != "classifier")
                or ".lite." in n] + head
    if method == "ft-full":
        return params
    raise KeyError(f"method '{method}': choose ft-last, tinytl-b, tinytl-lb or ft-full")
