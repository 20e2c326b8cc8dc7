"""Our Graph -> an NHWC TensorFlow function -> full-integer int8 .tflite (TFLiteConverter), zero TRANSPOSE ops.

Steps:
1. Emit each op with TF ops that map 1:1 onto TFLite builtins (explicit PAD + VALID for PyTorch's
   symmetric padding; one grouped CONV_2D; RESIZE_BILINEAR with half-pixel centres; GroupNorm with MUL,
   never tf.square, which stays float).
2. Calibrate (the converter's calibrate-only mode) on real training images.
3. Quantize with TF's MLIR quantizer, int8 in/out, per-channel weights, int32 biases; the lite residual
   branches optionally denylisted, so they run as float islands (DEQUANTIZE -> float -> QUANTIZE).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from device.graph import Graph

LITE_MARK = ".lite."  # graph tensors of lite residual branches contain this
OUT = "out"


def _tf_name(name: str) -> str:
    """A TF op name that survives into the .tflite tensor names (letters, digits, '_', '.', '/')."""
    return name.replace(":", "_")


def _unsplat(v: np.ndarray) -> np.ndarray:
    """A trainable constant must survive conversion as its own tensor (merge patches it later), but the
    converter folds splat ones/zeros away (x * 1, x + 0: a fresh GroupNorm). Nudging one element by
    ~1 ulp (0 -> 1e-30) makes it non-splat; the change is far below float32 resolution of the result."""
    v = np.array(v, dtype=np.float32)
    if v.size and np.all(v == v.flat[0]):
        v.flat[0] = np.nextafter(v.flat[0], np.float32(np.inf)) if v.flat[0] else np.float32(1e-30)
    return v


def _emit(g: Graph, params: dict[str, np.ndarray], x: tf.Tensor) -> tf.Tensor:
    env = {g.inputs[0]: x}
    c = {k: tf.constant(_unsplat(v) if g.tensors[k].trainable else v) for k, v in params.items()}
    for op in g.ops:
        # every TF op of `op` is named "<output tensor>/...", its result "<output tensor>/out": the .tflite
        # tensor names then say which graph tensor they hold (denylist, taps, merge find them by name)
        with tf.name_scope(_tf_name(op.outputs[0])):
            _emit_op(g, op, env, c)
    return env[g.outputs[0]]


def _emit_op(g: Graph, op, env: dict, c: dict) -> None:
        a, nm, ins = op.attrs, OUT, op.inputs
        if op.kind == "conv2d":
            y, w, b = env[ins[0]], c[ins[1]], c[ins[2]]
            t, bo, l, r = a["pad"]
            if a["stride"] == 1 and t == bo == l == r == w.shape[0] // 2:
                pad = "SAME"  # stride 1, odd kernel: TF's SAME is PyTorch's symmetric k//2
            else:
                pad = "VALID"
                if any(a["pad"]):
                    y = tf.pad(y, [[0, 0], [t, bo], [l, r], [0, 0]], name=nm + "/pad")
            cin, cout = y.shape[-1], w.shape[-1]
            if a["groups"] == cin == cout and a["groups"] > 1:  # depthwise: (KH, KW, C, 1)
                y = tf.nn.depthwise_conv2d(y, tf.reshape(w, (w.shape[0], w.shape[1], cin, 1)), [1, a["stride"], a["stride"], 1], pad, name=nm + "/conv")
            else:
                y = tf.nn.conv2d(y, w, a["stride"], pad, name=nm + "/conv")
            env[op.outputs[0]] = tf.nn.bias_add(y, b, name=nm)
        elif op.kind == "relu6":
            env[op.outputs[0]] = tf.nn.relu6(env[ins[0]], name=nm)
        elif op.kind == "relu":
            env[op.outputs[0]] = tf.nn.relu(env[ins[0]], name=nm)
        elif op.kind == "add":
            env[op.outputs[0]] = tf.add(env[ins[0]], env[ins[1]], name=nm)
        elif op.kind == "avg_pool2d":
            env[op.outputs[0]] = _avg_pool(env[ins[0]], a["kernel"], nm)
        elif op.kind == "group_norm":
            y, gamma, beta = env[ins[0]], c[ins[1]], c[ins[2]]
            n, h, w_, ch = y.shape
            z = tf.reshape(y, (n, h, w_, a["groups"], ch // a["groups"]))
            mean = tf.reduce_mean(z, axis=(1, 2, 4), keepdims=True)
            d = z - mean
            var = tf.reduce_mean(d * d, axis=(1, 2, 4), keepdims=True)  # MUL, not tf.square (stays float)
            z = tf.reshape(d * tf.math.rsqrt(var + a["eps"]), (n, h, w_, ch))
            env[op.outputs[0]] = tf.add(z * gamma, beta, name=nm)
        elif op.kind == "resize_bilinear":
            env[op.outputs[0]] = tf.compat.v1.image.resize_bilinear(env[ins[0]], a["size"], align_corners=False,
                                                                    half_pixel_centers=True, name=nm)
        elif op.kind == "mean":
            env[op.outputs[0]] = tf.reduce_mean(env[ins[0]], axis=(1, 2), name=nm)
        elif op.kind == "fully_connected":
            y = tf.matmul(env[ins[0]], c[ins[1]], transpose_b=True)
            env[op.outputs[0]] = tf.nn.bias_add(y, c[ins[2]], name=nm)
        else:
            raise ValueError(f"op {op.name}: no TF emitter for '{op.kind}'")


def _avg_pool(x: tf.Tensor, k: int, nm: str) -> tf.Tensor:
    """k x k stride-k average, PyTorch ceil mode, as a depthwise conv with 1/k^2 weights.

    Why not AVERAGE_POOL_2D: the quantizer keeps it int8 even inside a denylisted island, and an int8
    pool on the block input re-rounds badly. Odd sides: pad the end with zeros, then rescale the
    partial edge windows to average only what they cover (PyTorch's ceil-mode divisor).
    """
    _, h, w, c = x.shape
    ph, pw = -h % k, -w % k
    if ph or pw:
        x = tf.pad(x, [[0, 0], [0, ph], [0, pw], [0, 0]])
    y = tf.nn.depthwise_conv2d(x, tf.fill((k, k, c, 1), 1.0 / (k * k)), [1, k, k, 1], "VALID")
    if ph or pw:
        rows = np.full(y.shape[1], float(k)); rows[-1] = k - ph
        cols = np.full(y.shape[2], float(k)); cols[-1] = k - pw
        y = y * tf.constant((k * k / np.outer(rows, cols))[None, :, :, None].astype(np.float32))
    return tf.identity(y, name=nm)


def tf_function(g: Graph, params: dict[str, np.ndarray]) -> tf.types.experimental.ConcreteFunction:
    spec = tf.TensorSpec(g.tensors[g.inputs[0]].shape, tf.float32, name="input")
    return tf.function(lambda x: _emit(g, params, x)).get_concrete_function(spec)


def run_float(g: Graph, params: dict[str, np.ndarray], x_nhwc: np.ndarray) -> np.ndarray:
    """The emitted TF graph run in float, one image at a time (checks the emitter against PyTorch)."""
    fn = tf_function(g, params)
    return np.concatenate([fn(tf.constant(x_nhwc[i:i + 1])).numpy() for i in range(len(x_nhwc))])


def convert_int8(g: Graph, params: dict[str, np.ndarray], calibration: np.ndarray, *, float_lite: bool = True) -> bytes:
    """int8 .tflite; calibration: float32 NHWC preprocessed training images."""
    fn = tf_function(g, params)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    conv.experimental_new_quantizer = True
    conv._experimental_calibrate_only = True  # noqa: SLF001  calibrate now, quantize below with a denylist
    calibrated = conv.convert()
    deny = lite_tensor_names(calibrated) if float_lite else []
    from tensorflow.lite.python.convert import mlir_quantize
    return mlir_quantize(calibrated, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8,
                         denylisted_nodes=deny or None)


def lite_tensor_names(model: bytes) -> list[str]:
    """Output tensor names of the lite-branch ops in a (calibrated float) .tflite."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=model)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():  # noqa: SLF001  the only way to list ops with their tensors
        for o in op["outputs"]:
            if LITE_MARK in names.get(o, ""):
                out.append(names[o])
    return out


def tensor_index(model_names: dict[int, str], tensor: str, produced: list[int] | None = None) -> int | None:
    """The .tflite tensor holding graph tensor `tensor` (None when fused away, e.g. a conv before its ReLU6).

    Exact '<tensor>/out' name part first; else (the converter folded the last op, e.g. a bias into
    its conv) the last produced tensor named inside the '<tensor>/' scope. `produced`: op outputs in
    execution order (default: all tensors by index).
    """
    key = f"{_tf_name(tensor)}/{OUT}"
    order = produced if produced is not None else sorted(model_names)
    hits = [i for i in order if key in model_names.get(i, "").split(";")]
    if not hits:
        hits = [i for i in order if any(p.startswith(key + "/") for p in model_names.get(i, "").split(";"))]
    return int(hits[-1]) if hits else None


def interpreter(model: bytes, *, reference: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kind = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    it = Interpreter(model_content=model, experimental_op_resolver_type=kind)
    it.allocate_tensors()
    return it


def op_counts(model: bytes) -> Counter:
    it = interpreter(model, reference=True)  # no XNNPACK: it would replace ops by DELEGATE nodes
    return Counter(op["op_name"] for op in it._get_ops_details())  # noqa: SLF001


def run_int8(model: bytes, x_nhwc: np.ndarray, *, reference: bool = False) -> np.ndarray:
    """Float NHWC inputs -> quantized by the model's input params -> int8 run -> dequantized logits."""
    it = interpreter(model, reference=reference)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = inp["quantization"], out["quantization"]
    res = []
    for i in range(len(x_nhwc)):
        q = np.clip(np.round(x_nhwc[i:i + 1] / si) + zi, -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], q)
        it.invoke()
        res.append((it.get_tensor(out["index"]).astype(np.float32) - zo) * so)
    return np.concatenate(res)


def batches(x: np.ndarray, n: int) -> Iterable[np.ndarray]:
    for i in range(0, len(x), n):
        yield x[i:i + n]
