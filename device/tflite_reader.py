"""A small reader of .tflite files (the TFLite flatbuffer schema), numpy and the standard library only.

Only what an int8 inference engine needs: the main subgraph's tensors (shape, type, name, constant data,
quantization), its operators in execution order (builtin code, inputs, outputs, builtin options of the
ops the engine knows), and the model's inputs and outputs.

Flatbuffer layout in brief (little-endian): the file starts with a uint32 offset to the root table. A
table starts with an int32 `soffset`; its vtable sits at `table - soffset` and holds uint16 sizes, then
one uint16 offset per field id (0 = field absent, use the schema default). Offset fields (tables,
vectors, strings) hold a uint32 relative to their own position; a vector is a uint32 length followed by
its elements; a union is two fields: a ubyte type (id n) and the table offset (id n + 1).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# TensorType enum -> numpy dtype (STRING, RESOURCE, VARIANT... left out: the engine never reads them)
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
          9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16}
TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "STRING", 6: "BOOL", 7: "INT16",
              8: "COMPLEX64", 9: "INT8", 10: "FLOAT64", 11: "COMPLEX128", 12: "UINT64", 13: "RESOURCE",
              14: "VARIANT", 15: "UINT32", 16: "UINT16", 17: "INT4", 18: "BFLOAT16"}

# BuiltinOperator enum, the part a CNN can meet (an unknown code is reported by number)
OP_NAMES = dict(enumerate((
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE",
    "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED", "HASHTABLE_LOOKUP", "L2_NORMALIZATION", "L2_POOL_2D",
    "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC", "LSH_PROJECTION", "LSTM", "MAX_POOL_2D", "MUL", "RELU",
    "RELU_N1_TO_1", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF", "TANH",
    "CONCAT_EMBEDDINGS", "SKIP_GRAM", "CALL", "CUSTOM", "EMBEDDING_LOOKUP_SPARSE", "PAD",
    "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "TRANSPOSE", "MEAN",
    "SUB", "DIV", "SQUEEZE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE", "BIDIRECTIONAL_SEQUENCE_RNN",
    "EXP", "TOPK_V2", "SPLIT", "LOG_SOFTMAX", "DELEGATE", "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST", "PRELU",
    "MAXIMUM", "ARG_MAX", "MINIMUM", "LESS", "NEG", "PADV2", "GREATER", "GREATER_EQUAL", "LESS_EQUAL",
    "SELECT", "SLICE", "SIN", "TRANSPOSE_CONV", "SPARSE_TO_DENSE", "TILE", "EXPAND_DIMS", "EQUAL", "NOT_EQUAL",
    "LOG", "SUM", "SQRT", "RSQRT", "SHAPE", "POW", "ARG_MIN", "FAKE_QUANT", "REDUCE_PROD", "REDUCE_MAX",
    "PACK", "LOGICAL_OR", "ONE_HOT", "LOGICAL_AND", "LOGICAL_NOT", "UNPACK", "REDUCE_MIN", "FLOOR_DIV",
    "REDUCE_ANY", "SQUARE", "ZEROS_LIKE", "FILL", "FLOOR_MOD", "RANGE", "RESIZE_NEAREST_NEIGHBOR",
    "LEAKY_RELU", "SQUARED_DIFFERENCE", "MIRROR_PAD", "ABS", "SPLIT_V", "UNIQUE", "CEIL", "REVERSE_V2",
    "ADD_N", "GATHER_ND", "COS", "WHERE", "RANK", "ELU", "REVERSE_SEQUENCE", "MATRIX_DIAG", "QUANTIZE",
    "MATRIX_SET_DIAG", "ROUND", "HARD_SWISH", "IF", "WHILE", "NON_MAX_SUPPRESSION_V4",
    "NON_MAX_SUPPRESSION_V5", "SCATTER_ND", "SELECT_V2", "DENSIFY", "SEGMENT_SUM", "BATCH_MATMUL",
    "PLACEHOLDER_FOR_GREATER_OP_CODES", "CUMSUM", "CALL_ONCE", "BROADCAST_TO", "RFFT2D", "CONV_3D",
)))
OP_NAMES[150] = "GELU"

PADDING = {0: "SAME", 1: "VALID"}
ACTIVATION = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

# builtin options tables: op -> fields in schema id order (name, struct format, default).
# format "v" = vector of int32. Enums are stored as bytes.
_ACT = ("fused_activation_function", "b", 0)
_PAD = ("padding", "b", 0)
_OPTIONS: dict[str, tuple] = {
    "CONV_2D": (_PAD, ("stride_w", "i", 0), ("stride_h", "i", 0), _ACT,
                ("dilation_w_factor", "i", 1), ("dilation_h_factor", "i", 1)),
    "DEPTHWISE_CONV_2D": (_PAD, ("stride_w", "i", 0), ("stride_h", "i", 0), ("depth_multiplier", "i", 0), _ACT,
                          ("dilation_w_factor", "i", 1), ("dilation_h_factor", "i", 1)),
    "FULLY_CONNECTED": (_ACT, ("weights_format", "b", 0), ("keep_num_dims", "?", False),
                        ("asymmetric_quantize_inputs", "?", False)),
    "AVERAGE_POOL_2D": (_PAD, ("stride_w", "i", 0), ("stride_h", "i", 0), ("filter_width", "i", 0),
                        ("filter_height", "i", 0), _ACT),
    "ADD": (_ACT, ("pot_scale_int16", "?", True)),
    "SUB": (_ACT, ("pot_scale_int16", "?", True)),
    "MUL": (_ACT,),
    "DIV": (_ACT,),
    "MEAN": (("keep_dims", "?", False),),
    "SUM": (("keep_dims", "?", False),),
    "REDUCE_MAX": (("keep_dims", "?", False),),
    "SOFTMAX": (("beta", "f", 0.0),),
    "CONCATENATION": (("axis", "i", 0), _ACT),
    "RESIZE_BILINEAR": (("new_height", "i", 0), ("new_width", "i", 0), ("align_corners", "?", False),
                        ("half_pixel_centers", "?", False)),
    "RESIZE_NEAREST_NEIGHBOR": (("align_corners", "?", False), ("half_pixel_centers", "?", False)),
    "SQUEEZE": (("squeeze_dims", "v", ()),),
    "LEAKY_RELU": (("alpha", "f", 0.0),),
}
_OPTIONS["MAX_POOL_2D"] = _OPTIONS["AVERAGE_POOL_2D"]


class TFLiteFormatError(ValueError):
    """The bytes are not a .tflite model this reader understands."""


@dataclass(frozen=True)
class QuantParams:
    scale: np.ndarray       # float32, one per tensor or one per channel
    zero_point: np.ndarray  # int64, same length as scale
    axis: int               # quantized_dimension: the channel axis when per-channel

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    type: str                       # TensorType name, e.g. "INT8"
    dtype: type | None              # numpy dtype (None for types the engine never reads)
    buffer: int
    data: np.ndarray | None = None  # constant data (read-only view of the model bytes), else None
    quant: QuantParams | None = None
    shape_signature: tuple[int, ...] | None = None
    offset: int | None = None       # byte offset of the constant data in the model bytes (step programs point there)


@dataclass
class OpInfo:
    index: int
    code: int                        # BuiltinOperator number
    name: str                        # e.g. "CONV_2D" (CUSTOM ops: "CUSTOM:<custom_code>")
    inputs: tuple[int, ...]          # tensor indices, -1 = optional input absent
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)
    version: int = 1


@dataclass
class TFLiteModel:
    tensors: list[TensorInfo]
    ops: list[OpInfo]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    version: int
    description: str
    num_subgraphs: int
    external_buffers: int = 0        # buffers stored after the flatbuffer (offset/size), as for > 2 GB models


class _Table:
    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf: memoryview, pos: int):
        self.buf, self.pos = buf, pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, self.vt)[0]

    def _field(self, fid: int) -> int:
        """Absolute position of field `fid`, or 0 if absent."""
        o = 4 + 2 * fid
        if o >= self.vt_len:
            return 0
        off = struct.unpack_from("<H", self.buf, self.vt + o)[0]
        return self.pos + off if off else 0

    def scalar(self, fid: int, fmt: str, default=0):
        p = self._field(fid)
        return struct.unpack_from("<" + fmt, self.buf, p)[0] if p else default

    def _deref(self, fid: int) -> int:
        p = self._field(fid)
        return p + struct.unpack_from("<I", self.buf, p)[0] if p else 0

    def table(self, fid: int) -> _Table | None:
        p = self._deref(fid)
        return _Table(self.buf, p) if p else None

    def vector(self, fid: int) -> tuple[int, int]:
        """(start of the elements, length); (0, 0) when absent."""
        p = self._deref(fid)
        return (p + 4, struct.unpack_from("<I", self.buf, p)[0]) if p else (0, 0)

    def array(self, fid: int, dtype) -> np.ndarray:
        start, n = self.vector(fid)
        return np.frombuffer(self.buf, dtype=np.dtype(dtype).newbyteorder("<"), count=n, offset=start) if n else np.zeros(0, dtype)

    def tables(self, fid: int) -> list[_Table]:
        start, n = self.vector(fid)
        out = []
        for i in range(n):
            p = start + 4 * i
            out.append(_Table(self.buf, p + struct.unpack_from("<I", self.buf, p)[0]))
        return out

    def string(self, fid: int) -> str:
        start, n = self.vector(fid)
        return bytes(self.buf[start:start + n]).decode("utf-8", "replace") if start else ""


def _options(op_name: str, t: _Table | None) -> dict:
    spec = _OPTIONS.get(op_name, ())
    out = {}
    for fid, (name, fmt, default) in enumerate(spec):
        if t is None:
            out[name] = default
        elif fmt == "v":
            out[name] = tuple(int(v) for v in t.array(fid, np.int32))
        else:
            out[name] = t.scalar(fid, fmt, default)
    if "padding" in out:
        out["padding"] = PADDING.get(out["padding"], out["padding"])
    if "fused_activation_function" in out:
        out["fused_activation_function"] = ACTIVATION.get(out["fused_activation_function"], out["fused_activation_function"])
    return out


def _quant(t: _Table | None) -> QuantParams | None:
    if t is None:
        return None
    scale = t.array(2, np.float32).copy()
    if scale.size == 0:
        return None  # min/max only (float tensors keep them for debugging)
    zp = t.array(3, np.int64).astype(np.int64)
    if zp.size == 0:
        zp = np.zeros_like(scale, dtype=np.int64)
    if zp.size == 1 and scale.size > 1:
        zp = np.full(scale.size, zp[0], dtype=np.int64)
    return QuantParams(scale=scale, zero_point=zp, axis=int(t.scalar(6, "i", 0)))


def read_tflite(model: bytes | bytearray | memoryview | str | Path) -> TFLiteModel:
    """Parse a .tflite flatbuffer (bytes or a path). Only subgraph 0 is read (the main graph)."""
    if isinstance(model, (str, Path)):
        model = Path(model).read_bytes()
    buf = memoryview(bytes(model)) if not isinstance(model, bytes) else memoryview(model)
    if len(buf) < 8 or bytes(buf[4:8]) != b"TFL3":
        raise TFLiteFormatError("not a .tflite file (file identifier 'TFL3' missing)")
    root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])

    codes = []
    for oc in root.tables(1):
        # builtin_code (id 3) supersedes deprecated_builtin_code (id 0, a byte, capped at 127): max of both
        code = max(int(oc.scalar(0, "b", 0)), int(oc.scalar(3, "i", 0)))
        name = OP_NAMES.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            name = f"CUSTOM:{oc.string(1)}"
        codes.append((code, name, int(oc.scalar(2, "i", 1))))

    buffers, external = [], 0
    for b in root.tables(4):
        start, n = b.vector(0)
        if n:
            buffers.append((start, buf[start:start + n]))
        else:
            off, size = b.scalar(1, "Q", 0), b.scalar(2, "Q", 0)
            # large models: data lives after the flatbuffer, offset from the file start (valid only if > 1)
            buffers.append((off, buf[off:off + size]) if off > 1 and size else None)
            external += off > 1 and size > 0

    subgraphs = root.tables(2)
    if not subgraphs:
        raise TFLiteFormatError("model has no subgraph")
    sg = subgraphs[0]

    tensors = []
    for i, t in enumerate(sg.tables(0)):
        ttype = int(t.scalar(1, "b", 0))
        shape = tuple(int(v) for v in t.array(0, np.int32))
        sig = t.array(7, np.int32)
        dtype = DTYPES.get(ttype)
        bidx = int(t.scalar(2, "I", 0))
        data = None
        start, raw = buffers[bidx] if 0 < bidx < len(buffers) and buffers[bidx] is not None else (None, None)
        if raw is not None and dtype is not None and len(raw):
            data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
        else:
            start = None
        tensors.append(TensorInfo(index=i, name=t.string(3), shape=shape, type=TYPE_NAMES.get(ttype, str(ttype)),
                                  dtype=dtype, buffer=bidx, data=data, quant=_quant(t.table(4)),
                                  shape_signature=tuple(int(v) for v in sig) if sig.size else None, offset=start))

    ops = []
    for i, o in enumerate(sg.tables(3)):
        code, name, version = codes[int(o.scalar(0, "I", 0))]
        ops.append(OpInfo(index=i, code=code, name=name,
                          inputs=tuple(int(v) for v in o.array(1, np.int32)),
                          outputs=tuple(int(v) for v in o.array(2, np.int32)),
                          options=_options(name, o.table(4)), version=version))

    return TFLiteModel(tensors=tensors, ops=ops,
                       inputs=tuple(int(v) for v in sg.array(1, np.int32)),
                       outputs=tuple(int(v) for v in sg.array(2, np.int32)),
                       version=int(root.scalar(0, "I", 0)), description=root.string(3),
                       num_subgraphs=len(subgraphs), external_buffers=int(external))
