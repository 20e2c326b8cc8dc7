"""Trainable sets: the same bundle planned with other parameters learning (a method, a `last:k` partial update),
with the device's own buffer rules, and the deepest partial update that fits a budget.

    names = method_names(bundle, "tinytl-b")                    # graph parameter names the method trains
    plan = plan_for(bundle, last_k(names, 4), OptimConfig("sgd"))  # the device's plan, nothing allocated
    k, peak, bias_layers = deepest(names, budget, lambda ns: plan_for(bundle, ns, optim).peak["sram"])
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from device import (BudgetError, Bundle, Engine, OptimConfig, Plan, Taps, Trainer, dequantize, group_norm_params, plan_greedy,
                    unit_of, units)
from device import last_units as last_k  # `--trainable-blocks last:k`: the last k units' names plus the classifier's


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


def plan_for(bundle: Bundle, names: list[str], optim: OptimConfig, region: str = "sram") -> Plan:
    """The device's plan of the update step with `names` trainable, without allocating it: a zero budget makes
    the Trainer raise (carrying its plan) before it builds an arena."""
    b = with_trainables(bundle, names)
    try:
        Trainer(b, optim, planner=plan_greedy, budgets={region: 0}, region=region)
    except BudgetError as e:
        return e.plan
    raise AssertionError("unreachable: a non-empty plan cannot fit 0 bytes")


def bias_layers(names: list[str]) -> int:
    """Conv bias layers among `names` (lite-branch and classifier biases not counted)."""
    return sum(1 for n in names if n.endswith(".bias") and ".lite." not in n and unit_of(n) != "classifier")


def deepest(names: list[str], budget: int, peak: Callable[[list[str]], int]) -> tuple[int, int, int] | None:
    """(k, peak bytes, conv bias layers) of the deepest `last:k` partial update of `names` whose peak fits
    `budget`, or None when not even the classifier alone fits. peak(trainable names) -> bytes: the planned peak
    (plan_for's, or one re-planned under other runtime rules: fit.py).
    Binary search on k in [0, units]: the peak grows with k (each extra unit only adds buffers and extends the
    backward), so keep lo with peak(lo) fitting and hi the first known not to, and halve; each k planned once."""
    memo: dict[int, int] = {}

    def at(k: int) -> int:
        if k not in memo:
            memo[k] = peak(last_k(names, k))
        return memo[k]
    if at(0) > budget:
        return None
    lo, hi = 0, len(units(names))  # invariant: at(lo) fits
    if at(hi) <= budget:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) <= budget else (lo, mid)
    return lo, at(lo), bias_layers(last_k(names, lo))
