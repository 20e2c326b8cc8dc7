"""Float trainable parameter -> the encoding its .tflite slot holds (shared by device/trainer and convert merge).

One definition, so the model the device trains on and the .tflite `convert merge` writes agree bit for bit:
  float32 (lite branch island)  -> as is, in the .tflite layout
  int8 weight (classifier)      -> per-channel scales max|w| / 127, zero point 0, round half to even
  int32 bias                    -> round(b / float32(input scale * weight scale[c])), as TFLite's quantizer
"""
from __future__ import annotations

import numpy as np

INT32 = np.iinfo(np.int32)


def to_tflite_layout(value: np.ndarray, kind: str, tfl_shape: tuple) -> np.ndarray:
    """Our parameter layout (device/graph.py) -> the .tflite buffer's layout."""
    if kind == "conv_weight":
        if tfl_shape[0] == 1 and value.shape[2] == 1 and tfl_shape[-1] == value.shape[3]:  # depthwise (1, KH, KW, C)
            return value.transpose(2, 0, 1, 3)
        return value.transpose(3, 0, 1, 2)  # HWIO -> OHWI
    return value


def from_tflite_layout(value: np.ndarray, kind: str, our_shape: tuple) -> np.ndarray:
    """Inverse of to_tflite_layout: a .tflite conv filter (OHWI or 1HWC) -> HWIO."""
    if kind == "conv_weight":
        if value.shape[0] == 1 and our_shape[2] == 1 and value.shape[-1] == our_shape[3]:
            return value.transpose(1, 2, 0, 3)
        return value.transpose(1, 2, 3, 0)
    return value


def per_channel_int8(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float64 scales): symmetric per-channel quantization along `axis`."""
    amax = np.abs(w).reshape(w.shape[axis], -1).max(1) if axis == 0 else np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis))
    scale = np.maximum(amax, 1e-12) / 127.0
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8), scale


def bias_scale(input_scale: float, weight_scales: np.ndarray) -> np.ndarray:
    """float32 per-channel bias scale: TFLite recomputes input_scale * weight_scale in float32."""
    return (np.float64(input_scale) * np.asarray(weight_scales, dtype=np.float64)).astype(np.float32)


def bias_int32(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(b, np.float64) / np.asarray(scale, np.float64)), INT32.min, INT32.max).astype(np.int32)


def head_output_quant(w: np.ndarray, b: np.ndarray, x_scale: float, x_zero_point: int) -> tuple[float, int]:
    """(scale, zero point) of a retrained classifier's int8 output that cannot saturate.

    The calibrated output range fits the fresh head's tiny logits; a trained head's logits outgrow it and
    saturate at 127 (ties decide the class). The logits' worst case over the int8 input range
    [(-128 - zp) s, (127 - zp) s] bounds them per class; the output gets that range (0 included).
    """
    lo_x = (-128 - x_zero_point) * np.float64(x_scale)
    hi_x = (127 - x_zero_point) * np.float64(x_scale)
    w = np.asarray(w, np.float64)
    lo = (np.minimum(w * lo_x, w * hi_x).sum(1) + b).min()
    hi = (np.maximum(w * lo_x, w * hi_x).sum(1) + b).max()
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / 255.0
    return float(scale), int(np.clip(np.round(-128 - lo / scale), -128, 127))
