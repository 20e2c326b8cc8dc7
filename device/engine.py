"""The device's int8 inference engine: runs a .tflite graph with numpy kernels that reproduce LiteRT's
reference kernels byte for byte on the int8 path (see device/kernels/).

    eng = Engine("bundle/inference.tflite")
    logits_q = eng.run(x_int8)                          # (N, ...) int8; N may exceed the model's batch 1
    logits_q, acts = eng.run(x_int8, intermediates=True)  # acts: {tensor index: array}, every activation

All kernels are prepared (types checked, multipliers and weight matrices precomputed) when the Engine is
built, so an op without a kernel fails there, with its name and output tensor, not halfway through a run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .kernels import KERNELS, KernelConfig, UnsupportedOpError
from .tflite_reader import TensorInfo, TFLiteModel, read_tflite


class Engine:
    def __init__(self, model: bytes | str | Path | TFLiteModel, *, exact_float: bool = False):
        """exact_float: float ops of float islands reproduce LiteRT's reference bit for bit (slower);
        by default they may differ from it by float32 rounding (the int8 path is always exact)."""
        cfg = KernelConfig(exact_float=exact_float)
        self.model = model if isinstance(model, TFLiteModel) else read_tflite(model)
        self.tensors: list[TensorInfo] = self.model.tensors
        if self.model.num_subgraphs > 1:
            raise UnsupportedOpError(self.model.ops[0], self.tensors, "models with several subgraphs (control flow)")
        self._steps = []
        for op in self.model.ops:
            prepare = KERNELS.get(op.name)
            if prepare is None:
                raise UnsupportedOpError(op, self.tensors)
            self._steps.append((op, prepare(op, self.tensors, cfg)))
        # last step reading each activation, to free it early when intermediates are not kept
        self._last_use: dict[int, int] = {}
        for k, (op, _) in enumerate(self._steps):
            for i in op.inputs:
                if i >= 0 and self.tensors[i].data is None:
                    self._last_use[i] = k
        self._names = {t.name: t.index for t in self.tensors}
        self._cfg = cfg
        self._readers: dict[int, list[int]] = {}  # constant tensor -> steps whose kernel baked it in
        for k, (op, _) in enumerate(self._steps):
            for i in op.inputs:
                if i >= 0 and self.tensors[i].data is not None:
                    self._readers.setdefault(i, []).append(k)

    def set_constants(self, values: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Replace constant tensors (index -> (data, new per-channel scales or None)) and re-prepare the
        kernels that read them: how the trainer patches its current trainable parameters in."""
        import dataclasses
        steps: dict[int, set[int]] = {}  # step -> input positions replaced
        for i, (data, scale) in values.items():
            t = self.tensors[i]
            if t.data is None or data.shape != t.data.shape or data.dtype != t.data.dtype:
                raise ValueError(f"tensor #{i} '{t.name}': cannot replace {t.data.dtype if t.data is not None else None}"
                                 f"{t.shape} constant by {data.dtype}{data.shape}")
            t.data = data
            if scale is not None:
                t.quant = dataclasses.replace(t.quant, scale=np.asarray(scale, np.float32),
                                              zero_point=np.zeros(len(scale), np.int64))
            for k in self._readers.get(i, ()):
                steps.setdefault(k, set()).update(p for p, j in enumerate(self._steps[k][0].inputs) if j == i)
        for k, changed in steps.items():
            op, kernel = self._steps[k]
            if changed == {2} and hasattr(kernel, "set_bias"):  # bias only: the filter's preparation stands
                kernel.set_bias(self.tensors[op.inputs[2]].data)
            else:
                self._steps[k] = (op, KERNELS[op.name](op, self.tensors, self._cfg))

    @property
    def ops(self):
        """The graph's ops in execution order (OpInfo: name, inputs, outputs, options)."""
        return [op for op, _ in self._steps]

    def _details(self, indices) -> list[dict]:
        out = []
        for i in indices:
            t = self.tensors[i]
            q = t.quant
            out.append({
                "name": t.name, "index": i, "shape": np.array(t.shape, np.int32), "dtype": t.dtype,
                "quantization": (float(q.scale[0]), int(q.zero_point[0])) if q and not q.per_channel else (0.0, 0),
                "quantization_parameters": {
                    "scales": q.scale.copy() if q else np.zeros(0, np.float32),
                    "zero_points": q.zero_point.astype(np.int32) if q else np.zeros(0, np.int32),
                    "quantized_dimension": q.axis if q else 0},
            })
        return out

    @property
    def input_details(self) -> list[dict]:
        """Like LiteRT's get_input_details(): name, index, shape, dtype, quantization (scale, zero point)."""
        return self._details(self.model.inputs)

    @property
    def output_details(self) -> list[dict]:
        return self._details(self.model.outputs)

    def tensor_index(self, name: str) -> int:
        return self._names[name]

    def quantize_input(self, x: np.ndarray, k: int = 0) -> np.ndarray:
        """Float input -> the model's integer input type (round half away from zero, saturate)."""
        d = self.input_details[k]
        scale, zp = d["quantization"]
        info = np.iinfo(d["dtype"])
        q = np.asarray(x, np.float32) / np.float32(scale)
        q = np.sign(q) * np.floor(np.abs(q.astype(np.float64)) + 0.5) + zp
        return np.clip(q, info.min, info.max).astype(d["dtype"])

    def dequantize_output(self, y: np.ndarray, k: int = 0) -> np.ndarray:
        scale, zp = self.output_details[k]["quantization"]
        return (y.astype(np.float32) - zp) * np.float32(scale)

    def _feed(self, inputs) -> dict[int, np.ndarray]:
        idx = self.model.inputs
        if isinstance(inputs, dict):
            items = [(self._names[k] if isinstance(k, str) else k, v) for k, v in inputs.items()]
        else:
            if len(inputs) != len(idx):
                raise ValueError(f"model takes {len(idx)} input(s), got {len(inputs)}")
            items = list(zip(idx, inputs))
        env = {}
        for i, x in items:
            t = self.tensors[i]
            x = np.asarray(x)
            if x.dtype != t.dtype:
                raise TypeError(f"input '{t.name}' must be {np.dtype(t.dtype).name}, got {x.dtype} "
                                f"(use Engine.quantize_input for float data)")
            if x.shape[1:] != tuple(t.shape[1:]):
                raise ValueError(f"input '{t.name}' must have shape (N, {', '.join(map(str, t.shape[1:]))}), got {x.shape}")
            env[i] = x
        return env

    def run(self, *inputs, intermediates: bool = False, views: dict | None = None, hook=None):
        """Run the graph. inputs: one array per model input (or a dict name/index -> array).

        Returns the output array (a dict name -> array when the model has several outputs); with
        intermediates=True, (outputs, {tensor index: array}) holding the inputs and every op's output.
        views: tensor index -> preallocated array (an arena view); each op's result is written there and
        read back from there. hook(step, tensor index, array) runs after each op (the trainer saves
        what backward needs before a later op may reuse the bytes).
        """
        if len(inputs) == 1 and isinstance(inputs[0], dict):
            inputs = inputs[0]
        env = self._feed(inputs)
        outs = set(self.model.outputs)
        for k, (op, kernel) in enumerate(self._steps):
            args = [None if i < 0 else (env[i] if self.tensors[i].data is None else self.tensors[i].data)
                    for i in op.inputs]
            y = kernel(*args)
            o = op.outputs[0]
            if views is not None and o in views:
                v = views[o]
                v[...] = y.reshape(v.shape)
                y = v
            env[o] = y
            if hook is not None:
                hook(k, o, y)
            if not intermediates:
                for i in op.inputs:
                    if self._last_use.get(i) == k and i not in outs:
                        env.pop(i, None)
        if len(self.model.outputs) == 1:
            result = env[self.model.outputs[0]]
        else:
            result = {self.tensors[i].name: env[i] for i in self.model.outputs}
        return (result, env) if intermediates else result
