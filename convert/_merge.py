"""Device-learned trainable parameters -> a new stock int8 .tflite, by patching the bundle's flatbuffer.

Why patch rather than re-convert: the device learned on THIS graph: its activation scales, its frozen
int8 weights. Keeping every frozen tensor and every activation scale byte-identical and only
re-encoding the trained tensors gives LiteRT the model the device actually ran (re-calibrating would
move every activation scale, and would need the float frozen weights, which the bundle does not ship).

Per trainable tensor (slots recorded in trainable.json at conversion, checked by value there):
  float32 (lite branch island)  -> written as is, in the .tflite layout
  int8 weight (classifier)      -> new per-channel scales max|w|/127, zero point 0
  int32 bias                    -> round(b / (input scale * weight scale[c])), as TFLite's quantizer does
Each patched tensor gets a fresh buffer, so a constant the converter shared between tensors stays intact.
Limitation: activation ranges stay as calibrated; a logit beyond the output's int8 range saturates.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from device import (BundleError, bias_int32, bias_scale, head_output_quant, load_bundle, load_trained, per_channel_int8,
                    to_tflite_layout)
from train import UserError


def _fb():
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fbu
    return schema, fbu


def _set_buffer(model, schema, tensor, data: np.ndarray) -> None:
    buf = schema.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    model.buffers.append(buf)
    tensor.buffer = len(model.buffers) - 1


def patch(tflite: bytes, slots: list[dict[str, Any]], values: dict[str, np.ndarray]) -> bytes:
    """Return `tflite` with each slot's tensor re-encoded from values[slot name] (float32, our layout)."""
    schema, fbu = _fb()
    model = fbu.convert_bytearray_to_object(bytearray(tflite))
    sg = model.subgraphs[0]
    # weights before biases: a bias's scale depends on its weight's (possibly new) scales
    for p in sorted(slots, key=lambda p: p["slot"]["input"] != 1):
        s, name = p["slot"], p["name"]
        op = sg.operators[s["op"]]
        if int(op.inputs[s["input"]]) != s["tensor"]:
            raise BundleError(f"trainable.json: slot of '{name}' does not match inference.tflite (tensor {s['tensor']})")
        t = sg.tensors[s["tensor"]]
        shape = tuple(int(d) for d in t.shape)
        v = to_tflite_layout(values[name].astype(np.float64), s["layout"], shape)
        if v.shape != shape:
            raise BundleError(f"'{name}': {v.shape} does not fit tflite tensor {s['tensor']} {shape}")
        if s["dtype"] == "float32":
            _set_buffer(model, schema, t, v.astype(np.float32))
        elif s["dtype"] == "int8":
            if len(np.asarray(t.quantization.scale)) > 1:
                q, scale = per_channel_int8(v, axis=int(t.quantization.quantizedDimension))
            else:  # a per-tensor int8 constant (GroupNorm affine in an int8 lite branch)
                q, scale = per_channel_int8(v.reshape(1, -1), axis=0)
                q = q.reshape(v.shape)
            t.quantization.scale = scale.astype(np.float32)
            t.quantization.zeroPoint = np.zeros(len(scale), dtype=np.int64)
            _set_buffer(model, schema, t, q)
        elif s["dtype"] == "int32":
            s_in = float(np.asarray(sg.tensors[op.inputs[0]].quantization.scale)[0])
            s_w = np.asarray(sg.tensors[op.inputs[1]].quantization.scale, dtype=np.float64)
            scale = bias_scale(s_in, s_w)
            q = bias_int32(v, scale)
            t.quantization.scale = scale
            t.quantization.zeroPoint = np.zeros(len(scale), dtype=np.int64)
            _set_buffer(model, schema, t, q)
        else:
            raise BundleError(f"'{name}': cannot re-encode a {s['dtype']} tensor")
    _widen_head_output(sg, slots, values)
    used = {int(t.buffer) for g in model.subgraphs for t in g.tensors}
    for i, buf in enumerate(model.buffers):  # drop the replaced values (indices stay valid)
        if i not in used:
            buf.data = None
    return bytes(fbu.convert_object_to_bytearray(model))


def _widen_head_output(sg, slots: list[dict[str, Any]], values: dict[str, np.ndarray]) -> None:
    """A retrained FULLY_CONNECTED head that writes the model output: give the output an int8 range its
    logits cannot saturate (device/requant.head_output_quant); only that op's rescale reads the scale."""
    by_op = {}
    for p in slots:
        by_op.setdefault(p["slot"]["op"], {})[p["slot"]["input"]] = values[p["name"]]
    for k, vals in by_op.items():
        op = sg.operators[k]
        out = sg.tensors[op.outputs[0]]
        if 1 not in vals or int(op.outputs[0]) not in [int(o) for o in sg.outputs] or len(vals[1].shape) != 2:
            continue
        x = sg.tensors[op.inputs[0]].quantization
        b = vals.get(2, np.zeros(vals[1].shape[0]))
        scale, zp = head_output_quant(vals[1], b, float(np.asarray(x.scale)[0]), int(np.asarray(x.zeroPoint)[0]))
        out.quantization.scale = np.array([scale], np.float32)
        out.quantization.zeroPoint = np.array([zp], np.int64)


def merge(bundle: str | Path, trained: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out}: exists; pass --force to replace it")
    b = load_bundle(bundle)
    values = load_trained(b, trained)
    data = patch(b.tflite_path.read_bytes(), b.spec["params"], values)
    from ._tflite import interpreter
    interpreter(data, reference=True)  # the result must load and allocate in stock LiteRT
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return {"params": len(values), "bytes": len(data), "out": str(out)}
