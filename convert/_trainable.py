"""The trainable graph: which parameters learn on the device, the ops using them, and their taps in the .tflite.

trainable.json (numpy + json readable, see device/bundle.py):
  graph           the whole float graph (device/graph.py dict), trainable flags set
  params          [{name, shape, dtype, op, slot}]: slot = where the value lives in inference.tflite:
                  {"op": tflite op index, "input": position, "layout": how our layout maps onto it,
                   "quantized": int8/int32 there (requantize on merge) or float (island)}
  ops             graph ops that use a trainable parameter, each with its taps:
                  reads/writes = inference.tflite tensor indices of its activation input/output (null: fused)
  frozen          [{name, shape, dtype, op, key}]: the FROZEN GroupNorm gamma/beta, float32, stored in
                  trainable.npz under key 'frozen/<name>'. The device's backward through a frozen GroupNorm
                  needs gamma, and the .tflite cannot be trusted to hold it: TensorFlow's converter drops a
                  MUL by an all-ones constant and an ADD of an all-zeros one (a lite branch's norm1 at
                  its init, gamma = 1 and beta = 0), and may fold constants otherwise. Trainable ones are
                  kept there by _tflite._unsplat; frozen ones are shipped here, exactly as converted.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from device import FROZEN_PREFIX, Graph, group_norm_params, to_dict, to_tflite_layout as _to_tflite_layout
from . import _tflite

FORMAT = "tinytl-trainable"
VERSION = 2  # 2: frozen GroupNorm parameters shipped (FROZEN_PREFIX)
# our parameter layout -> the .tflite buffer's layout
LAYOUTS = {"conv2d.weight": "HWIO -> OHWI (CONV_2D) or 1HWO (DEPTHWISE_CONV_2D)",
           "fully_connected.weight": "(Cout, Cin), same", "bias": "(Cout,), same", "group_norm": "(C,), same"}


def _model_tables(model: bytes, g: Graph) -> tuple[dict[int, str], list[dict], Any]:
    """(tensor names, ops, interpreter); the model's input/output renamed to the graph's (the converter
    calls them 'serving_default_...'/'Identity')."""
    it = _tflite.interpreter(model, reference=True)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    names[it.get_input_details()[0]["index"]] = f"{g.inputs[0]}/{_tflite.OUT}"
    names[it.get_output_details()[0]["index"]] = f"{g.outputs[0]}/{_tflite.OUT}"
    return names, it._get_ops_details(), it  # noqa: SLF001


def _tflite_value(it, idx: int) -> np.ndarray:
    d = it._get_tensor_details(idx, 0)  # noqa: SLF001
    v = it.get_tensor(idx).astype(np.float64)
    q = d["quantization_parameters"]
    if d["dtype"] in (np.int8, np.int32) and len(q["scales"]):
        ax = q["quantized_dimension"]
        shape = [1] * v.ndim
        if len(q["scales"]) > 1:
            shape[ax] = -1
        v = (v - q["zero_points"].reshape(shape)) * q["scales"].reshape(shape)
    return v


def find_slots(g: Graph, params: dict[str, np.ndarray], model: bytes) -> dict[str, dict]:
    """For each trainable parameter: the .tflite op and input that hold it, checked by value.

    A conv/FC parameter sits at input 1 (weight) or 2 (bias) of the op producing the graph op's output;
    a GroupNorm gamma/beta is the constant input of the MUL/ADD named '<norm>/mul_2' / '<norm>/out'.
    """
    names, ops, it = _model_tables(model, g)
    producer_of = {o: i for i, op in enumerate(ops) for o in op["outputs"]}
    produced = [o for op in ops for o in op["outputs"]]
    slots: dict[str, dict] = {}
    for op in g.ops:
        trainable = [(pos, t) for pos, t in enumerate(op.inputs) if g.tensors[t].trainable]
        for pos, pname in trainable:
            if op.kind in ("conv2d", "fully_connected"):
                out = _tflite.tensor_index(names, op.outputs[0], produced)
                k = producer_of.get(out)
                kind = "conv_weight" if op.kind == "conv2d" and pos == 1 else "plain"
                slot = {"op": k, "input": pos, "layout": kind}
            else:  # group_norm: gamma multiplies in '<out>/mul_2', beta adds in '<out>/out'
                key = f"{op.outputs[0]}/{'mul_2' if pos == 1 else _tflite.OUT}"
                k = next((i for i, o in enumerate(ops) if any(key in names[t].split(";") for t in o["outputs"])), None)
                slot = {"op": k, "input": None, "layout": "plain"}
                if k is not None:
                    consts = [j for j, t in enumerate(ops[k]["inputs"]) if t >= 0 and
                              it._get_tensor_details(t, 0)["shape"].tolist() == [params[pname].size]]  # noqa: SLF001
                    slot["input"] = consts[-1] if consts else None
            if slot["op"] is None or slot["input"] is None:
                raise RuntimeError(f"trainable parameter '{pname}': no place found in inference.tflite")
            t_idx = ops[slot["op"]]["inputs"][slot["input"]]
            found = _tflite_value(it, t_idx)
            want = _to_tflite_layout(params[pname].astype(np.float64), slot["layout"], tuple(found.shape))
            tol = 1e-5 + 0.6 * _step(it, t_idx)  # a quantized value is within half a step of the float
            if found.shape != want.shape or np.abs(found - want).max() > tol:
                raise RuntimeError(f"trainable parameter '{pname}': tflite tensor {t_idx} ({names[t_idx]}) does not hold it")
            slot.update(op=int(slot["op"]), input=int(slot["input"]), tensor=int(t_idx), dtype=np.dtype(it._get_tensor_details(t_idx, 0)["dtype"]).name,  # noqa: SLF001
                        op_name=ops[slot["op"]]["op_name"])
            slots[pname] = slot
    return slots


def _step(it, idx: int) -> float:
    s = it._get_tensor_details(idx, 0)["quantization_parameters"]["scales"]  # noqa: SLF001
    return float(np.max(s)) if len(s) else 0.0


def trainable_spec(g: Graph, params: dict[str, np.ndarray], model: bytes, method: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(trainable.json dict, trainable.npz arrays)."""
    names, tops, it = _model_tables(model, g)
    produced = [it.get_input_details()[0]["index"]] + [o for op in tops for o in op["outputs"]]
    slots = find_slots(g, params, model)
    uses = {t: op for op in g.ops for t in op.inputs if g.tensors[t].trainable}
    ops = []
    for op in g.ops:
        if any(g.tensors[t].trainable for t in op.inputs):
            acts = [t for t in op.inputs if not g.tensors[t].const]
            ops.append({"name": op.name, "kind": op.kind, "output": op.outputs[0],
                        "reads": {t: _tflite.tensor_index(names, t, produced) for t in acts},
                        "writes": {t: _tflite.tensor_index(names, t, produced) for t in op.outputs}})
    plist = [{"name": n, "shape": list(g.tensors[n].shape), "dtype": "float32", "op": uses[n].outputs[0], "slot": slots[n]}
             for n in sorted(slots, key=list(g.tensors).index)]
    frozen = group_norm_params(g, frozen_only=True)
    flist = [{"name": n, "shape": list(g.tensors[n].shape), "dtype": "float32", "op": op, "key": FROZEN_PREFIX + n}
             for n, op in frozen.items()]
    spec = {"format": FORMAT, "version": VERSION, "method": method, "layouts": LAYOUTS, "params": plist, "ops": ops,
            "frozen": flist, "graph": to_dict(g)}
    arrays = {p["name"]: params[p["name"]].astype(np.float32) for p in plist}
    arrays.update({f["key"]: np.asarray(params[f["name"]], np.float32).reshape(f["shape"]) for f in flist})
    return spec, arrays

