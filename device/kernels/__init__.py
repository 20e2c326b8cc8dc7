"""Kernels of the device engine: TFLite builtin op name -> prepare(op, tensors, cfg) -> run(*inputs) -> output.

`prepare` checks types and precomputes everything static (fixed-point multipliers, weight matrices,
activation ranges); it raises UnsupportedOpError, naming the op and its output tensor, for any op or
type combination without a kernel here. Nothing falls back to an approximation silently.
"""
from __future__ import annotations

from ._common import KernelConfig, UnsupportedOpError
from ._fixed_point import multiply_by_quantized_multiplier, quantize_multiplier
from .activations import prepare_hard_swish, prepare_logistic, prepare_softmax
from .conv import prepare_conv2d, prepare_depthwise, prepare_fully_connected
from .elementwise import (prepare_binary, prepare_dequantize, prepare_quantize, prepare_relu,
                          prepare_unary_float)
from .spatial import (prepare_concatenation, prepare_mean, prepare_pad, prepare_pool,
                      prepare_reshape, prepare_resize_bilinear)

KERNELS = {
    "CONV_2D": prepare_conv2d,
    "DEPTHWISE_CONV_2D": prepare_depthwise,
    "FULLY_CONNECTED": prepare_fully_connected,
    "ADD": prepare_binary, "SUB": prepare_binary, "MUL": prepare_binary, "DIV": prepare_binary,
    "SQUARED_DIFFERENCE": prepare_binary,
    "RSQRT": prepare_unary_float, "SQRT": prepare_unary_float, "ABS": prepare_unary_float, "NEG": prepare_unary_float,
    "RELU": prepare_relu, "RELU6": prepare_relu, "RELU_N1_TO_1": prepare_relu,
    "QUANTIZE": prepare_quantize, "DEQUANTIZE": prepare_dequantize,
    "PAD": prepare_pad, "PADV2": prepare_pad,
    "RESHAPE": prepare_reshape, "SQUEEZE": prepare_reshape, "EXPAND_DIMS": prepare_reshape,
    "CONCATENATION": prepare_concatenation,
    "MEAN": prepare_mean,
    "AVERAGE_POOL_2D": prepare_pool, "MAX_POOL_2D": prepare_pool,
    "RESIZE_BILINEAR": prepare_resize_bilinear,
    "SOFTMAX": prepare_softmax, "LOGISTIC": prepare_logistic, "HARD_SWISH": prepare_hard_swish,
}

__all__ = ["KERNELS", "KernelConfig", "UnsupportedOpError", "multiply_by_quantized_multiplier", "quantize_multiplier"]
