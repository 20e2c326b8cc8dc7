"""Batch-1 on-device training of a bundle's trainable graph, inside one planned arena.

    tr = Trainer(load_bundle("bundle"), OptimConfig("adam", lr=1e-3, total_steps=7000))
    loss, ok = tr.step(x_int8, label)       # x_int8: (1, H, W, C) quantized model input
    logits = tr.predict(x_int8_batch)       # float logits of the current parameters

One step:
  1. patch: every trainable parameter re-encoded into the engine's constants as `convert merge` would
     (device/requant.py: int32 biases at input_scale * weight_scale, int8 head per channel, float islands
     as is), so the forward is the int8 model LiteRT would run after merging.
  2. forward: the int8 engine writes every activation into its arena view; a hook copies what backward
     needs as it is produced (1-bit ReLU masks from the int8 outputs, inputs of trainable weights, GroupNorm
     inputs), before later ops reuse the bytes.
  3. loss: the classifier runs in float on the pooled features (the int8 head's output range is calibrated
     for the fresh head and would saturate as it learns), softmax cross entropy.
  4. backward in float32 over dequantized frozen weights, last op first, only the ops downstream of some
     trainable parameter (autograd's rule), each gradient buffer dying at the op that consumes it.
  5. a NaN/inf loss or gradient skips the update (the caller counts and rolls back); else SGD/Adam.

The fault seam: `on_phase` (None in a normal run) is called as on_phase(step, phase, done, total) at every
point a step can be stopped at, `done` of `total` units of the phase being complete: 'step' (0 of 1) as a step
begins, 'forward' after each op of the int8 graph (and before the first), 'backward' before each op, 'update'
before each parameter. A hook that raises stops the step there (firmware_sim's power cuts); the learning loop
hands the same hook to checkpoint.save, whose phases are 'ckpt-write', 'ckpt-fsync', 'ckpt-rename', 'ckpt-cleanup'.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import backward as bw
from .bundle import Bundle
from .engine import Engine
from .kernels._common import quantized_activation_range
from .memplan import Arena, Spec, make_plan, spec
from .optim import OPTIMIZERS, OptimConfig, lr_at, update
from .planner import Plan, check_budget, plan_greedy
from .requant import bias_int32, bias_scale, per_channel_int8, to_tflite_layout
from .taps import Taps, dequantize


class TrainError(RuntimeError):
    """The bundle's trainable graph cannot be trained by this runtime; the message says why."""


class Trainer:
    def __init__(self, bundle: Bundle, optim: OptimConfig, *, planner=plan_greedy, budgets: dict | None = None,
                 region: str = "sram", arena_capacity: Callable[[Plan], dict[str, int]] | None = None):
        """budgets: region -> bytes the plan must fit (BudgetError before any arena exists); arena_capacity: the
        arena's bytes per region given the plan (default: exactly the plan's peak), e.g. a target's whole SRAM."""
        self.bundle, self.cfg, self.region, self.budgets = bundle, optim, region, budgets
        g = self.graph = bundle.graph
        self.engine = self._make_engine()
        self.taps = Taps(g, self.engine, bundle.frozen)
        self.names = [p["name"] for p in bundle.spec["params"]]
        self.slots = {p["name"]: p["slot"] for p in bundle.spec["params"]}
        self.head = g.ops[-1]
        if self.head.kind != "fully_connected" or self.head.outputs[0] != g.outputs[0]:
            raise TrainError("the graph must end in a fully_connected classifier")
        req = set(self.names)  # tensors that depend on a trainable parameter: they need a gradient
        for op in g.ops:
            if any(i in req for i in op.inputs):
                req.update(op.outputs)
        self.req = {t for t in req if not g.tensors[t].const}
        self.bwd = [op for op in reversed(g.ops) if op.outputs[0] in self.req]
        self._frozen: dict | None = None
        self.specs = self._specs()
        self.plan = make_plan(self.specs, planner)
        if budgets is not None:
            check_budget(self.plan, budgets)
        self.arena = Arena(self.plan, self.specs, capacity=arena_capacity(self.plan) if arena_capacity else None)
        for n in self.names:
            self.arena[f"param:{n}"][...] = bundle.trainable[n]
            for k in range(OPTIMIZERS[optim.name]):
                self.arena[f"opt{k}:{n}"][...] = 0
        self.updates = 0          # applied updates (Adam's t)
        self._dirty = True
        self.on_phase: Callable[[int, str, int, int], None] | None = None  # the fault seam (module docstring)
        self._now: int | None = None  # the step being run (its schedule index), what on_phase is told

    def use_constants(self, views: dict[int, np.ndarray]) -> None:
        """Read the .tflite's constants from `views` (tensor index -> read-only array, e.g. a flash image) from now
        on; the frozen float copies backward reads become read-only, and trainable slots are re-encoded into RAM
        before the next forward."""
        self.engine.set_constants({i: (v, None) for i, v in views.items()})
        for v in self.frozen.values():
            v.flags.writeable = False
        self._dirty = True

    def _phase(self, phase: str, done: int, total: int) -> None:
        """Tell the fault seam that `done` of `total` units of `phase` of the current step are complete."""
        if self.on_phase is not None and self._now is not None:
            self.on_phase(self._now, phase, done, total)

    def _make_engine(self):
        return Engine(self.bundle.tflite_path)

    @property
    def frozen(self) -> dict[str, np.ndarray]:
        """float32 copies of the frozen weights the numpy backward multiplies by (outside the arena; the step
        program reads them from the model buffer instead, device/step/)."""
        if self._frozen is None:
            self._frozen = {}
            for op in self.bwd:
                for pos in ((1,) if op.kind in ("conv2d", "fully_connected", "group_norm") else ()):
                    if op.inputs[pos] not in self.slots:
                        self._frozen[op.inputs[pos]] = self.taps.frozen_param(op, pos)
            for pos in (1, 2):
                if self.head.inputs[pos] not in self.slots:
                    self._frozen[self.head.inputs[pos]] = self.taps.frozen_param(self.head, pos)
        return self._frozen

    # ---- schedule and buffers -------------------------------------------------------------------
    def _specs(self) -> dict[str, Spec]:
        g, eng, taps = self.graph, self.engine, self.taps
        T = len(eng.ops)
        self.T, self.U = T, T + 1 + len(self.bwd)
        bstep = {op.outputs[0]: T + 1 + j for j, op in enumerate(self.bwd)}
        self.bstep = bstep
        out: dict[str, Spec] = {}

        def add(s: Spec) -> None:
            old = out.get(s.buffer.name)
            if old is not None:  # the same tensor saved for two ops: keep it until the later one
                s = spec(s.buffer.name, s.dtype, s.shape, min(old.buffer.first, s.buffer.first),
                         max(old.buffer.last, s.buffer.last), s.buffer.kind, old.buffer.layer, self.region)
            out[s.buffer.name] = s

        last_read: dict[int, int] = {}
        for k, op in enumerate(eng.ops):
            for i in op.inputs:
                if i >= 0 and eng.tensors[i].data is None:
                    last_read[i] = k
        for t in eng.tensors:
            if t.data is None and (t.index in taps.step_of):
                first = taps.step_of[t.index]
                add(spec(f"act:{t.index}", t.dtype, t.shape, first, max(first, last_read.get(t.index, first)),
                         "activation", t.name.split(";")[0].split("/")[0], self.region))
        producer = {o: op for op in g.ops for o in op.outputs}

        def save(tensor: str, last: int, kind: str, layer: str) -> None:
            i = taps.index[tensor]
            ti = eng.tensors[i]
            add(spec(f"{kind}:{tensor}", ti.dtype, g.tensors[tensor].shape, taps.step_of[i], last, kind, layer, self.region))

        save(self.head.inputs[0], max(T, bstep.get(self.head.outputs[0], T)), "saved", self.head.name)
        add(spec("logits", np.float32, g.tensors[self.head.outputs[0]].shape, T, T, "activation", self.head.name, self.region))
        for op in self.bwd:
            s = bstep[op.outputs[0]]
            if op.kind in ("conv2d", "fully_connected") and op.inputs[1] in self.slots or op.kind == "group_norm":
                save(op.inputs[0], s, "saved", op.name)
            if op.kind in ("relu", "relu6"):
                save(op.outputs[0], s, "mask", op.name)
            if op.kind == "conv2d" and op.inputs[0] in self.req:
                kh, kw, cig, co = g.tensors[op.inputs[1]].shape
                cin = g.tensors[op.inputs[0]].shape[3]
                _, oh, ow, _ = g.tensors[op.outputs[0]].shape
                if not (op.attrs["groups"] == cin == co or (kh == kw == 1 and op.attrs["stride"] == 1)):
                    add(spec(f"cols:{op.outputs[0]}", np.float32, (oh * ow * kh * kw * cin,), s, s, "scratch", op.name, self.region))
        # in-place ReLU backward: dx = dy * mask overwrites dy when the ReLU is its input's only reader, so a
        # conv output and its ReLU output share one gradient buffer (named after the ReLU output)
        self.gbuf = {t: t for t in self.req}
        for op in self.bwd:  # last op first: a ReLU output's buffer is settled before its input joins it
            x = op.inputs[0]
            if op.kind in ("relu", "relu6") and x in self.req and len(g.consumers(x)) == 1 and x not in g.outputs:
                self.gbuf[x] = self.gbuf[op.outputs[0]]
        spans: dict[str, tuple[int, int]] = {}
        for t in self.req:
            readers = [bstep[c.outputs[0]] for c in g.consumers(t) if c.outputs[0] in bstep]
            first, last = (min(readers) if readers else T), bstep[t]
            old = spans.get(self.gbuf[t])
            spans[self.gbuf[t]] = (min(first, old[0]), max(last, old[1])) if old else (first, last)
        for r, (first, last) in spans.items():
            add(spec(f"grad:{r}", np.float32, g.tensors[r].shape, first, last, "grad", producer[r].name, self.region))
        uses = {p: op for op in g.ops for p in op.inputs if p in self.slots}
        for n in self.names:
            shape = g.tensors[n].shape
            add(spec(f"param:{n}", np.float32, shape, 0, self.U, "param", uses[n].name, self.region))
            add(spec(f"pgrad:{n}", np.float32, shape, bstep[uses[n].outputs[0]], self.U, "grad", uses[n].name, self.region))
            for k in range(OPTIMIZERS[self.cfg.name]):
                add(spec(f"opt{k}:{n}", np.float32, shape, 0, self.U, "optimizer", uses[n].name, self.region))
        return out

    # ---- parameters -----------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, np.ndarray]:
        return {n: self.arena[f"param:{n}"] for n in self.names}

    def _value(self, name: str) -> np.ndarray:
        return self.arena[f"param:{name}"] if name in self.slots else self.frozen[name]

    def patch(self) -> None:
        """Re-encode the current parameters into the engine's constants (weights before biases)."""
        if not self._dirty:
            return
        eng, vals, new_scale = self.engine, {}, {}
        for n in sorted(self.names, key=lambda n: self.slots[n]["input"] != 1):
            s = self.slots[n]
            t = eng.tensors[s["tensor"]]
            op = eng.model.ops[s["op"]]
            v = to_tflite_layout(self._value(n).astype(np.float64), s["layout"], t.shape).reshape(t.shape)
            if s["dtype"] == "float32":
                vals[t.index] = (v.astype(np.float32), None)
            elif s["dtype"] == "int8":
                axis = t.quant.axis if t.quant.per_channel else 0
                q, scale = per_channel_int8(v if t.quant.per_channel else v.reshape(1, -1), axis=axis)
                vals[t.index] = (q.reshape(t.shape), scale if t.quant.per_channel else scale[:1])
                new_scale[t.index] = vals[t.index][1]
            elif s["dtype"] == "int32":
                w = op.inputs[1]
                s_w = new_scale.get(w, eng.tensors[w].quant.scale)
                scale = bias_scale(float(eng.tensors[op.inputs[0]].quant.scale[0]), np.broadcast_to(s_w, v.shape))
                vals[t.index] = (bias_int32(v, scale), scale)
            else:
                raise TrainError(f"'{n}': cannot encode a {s['dtype']} slot")
        eng.set_constants(vals)
        self._dirty = False

    # ---- forward ----------------------------------------------------------------------------------
    def _saver(self):
        by_index: dict[int, list[str]] = {}
        for name, s in self.specs.items():
            kind, _, tensor = name.partition(":")
            if kind in ("saved", "mask"):
                by_index.setdefault(self.taps.index[tensor], []).append(name)

        def hook(_k: int, o: int, y: np.ndarray) -> None:
            for name in by_index.get(o, ()):
                view = self.arena[name]
                if name.startswith("mask:"):
                    view[...] = np.packbits(self._mask(name[5:], y).reshape(-1))
                else:
                    view[...] = y.reshape(view.shape)
        return hook

    def _mask(self, tensor: str, y: np.ndarray) -> np.ndarray:
        """ReLU/ReLU6 derivative from the op's output: 1 where the input was strictly inside the range."""
        kind = self.graph.producer(tensor).kind
        t = self.engine.tensors[self.taps.index[tensor]]
        if y.dtype == np.float32:
            return (y > 0) & (y < 6) if kind == "relu6" else y > 0
        s, z = float(t.quant.scale[0]), int(t.quant.zero_point[0])
        lo, hi = quantized_activation_range("RELU6" if kind == "relu6" else "RELU", np.float32(s), z, np.int8)
        return (y > lo) & (y < hi)

    def saved(self, tensor: str) -> np.ndarray:
        """A saved tensor, dequantized to float32."""
        return dequantize(self.engine.tensors[self.taps.index[tensor]], self.arena[f"saved:{tensor}"])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (1, H, W, C) int8 model input. Returns the float logits (1, classes); saves for backward."""
        self.patch()
        eng, hook = self.engine, getattr(self, "_hook", None) or self._saver()
        self._hook = hook
        views = {int(k[4:]): v for k, v in self.arena.views.items() if k.startswith("act:")}
        i0 = eng.model.inputs[0]
        views[i0][...] = x
        hook(0, i0, views[i0])
        run_hook = hook
        if self.on_phase is not None:
            n = len(eng.ops)
            self._phase("forward", 0, n)

            def run_hook(k: int, o: int, y: np.ndarray) -> None:
                hook(k, o, y)
                self._phase("forward", k + 1, n)
        eng.run(views[i0], views=views, hook=run_hook)
        logits = self.arena["logits"]
        logits[...] = self.saved(self.head.inputs[0]) @ self._value(self.head.inputs[1]).T + self._value(self.head.inputs[2])
        return logits

    # ---- backward ---------------------------------------------------------------------------------
    def backward(self, dlogits: np.ndarray) -> None:
        g, a = self.graph, self.arena
        written = {self.head.outputs[0]}
        a[f"grad:{self.gbuf[self.head.outputs[0]]}"][...] = dlogits

        def emit(t: str, v: np.ndarray) -> None:
            if t not in self.req:
                return
            view = a[f"grad:{self.gbuf[t]}"]
            if t in written:
                view += v
            else:
                view[...] = v
                written.add(t)

        def pgrad(p: str, v) -> None:
            if p in self.slots and v is not None:
                a[f"pgrad:{p}"][...] = v

        for k, op in enumerate(self.bwd):
            self._phase("backward", k, len(self.bwd))
            dy = a[f"grad:{self.gbuf[op.outputs[0]]}"]
            x = op.inputs[0]
            shape = g.tensors[x].shape
            if op.kind == "conv2d":
                trains_w = op.inputs[1] in self.slots
                scratch = a.views.get(f"cols:{op.outputs[0]}")
                dx, dw, db = bw.conv2d(dy, self._value(op.inputs[1]), op.attrs, shape, x=self.saved(x) if trains_w else None,
                                       need_dx=x in self.req, scratch=scratch)
                pgrad(op.inputs[1], dw)
                pgrad(op.inputs[2], db)
            elif op.kind == "fully_connected":
                trains_w = op.inputs[1] in self.slots
                dx, dw, db = bw.fully_connected(dy, self._value(op.inputs[1]), x=self.saved(x) if trains_w else None,
                                                need_dx=x in self.req)
                pgrad(op.inputs[1], dw)
                pgrad(op.inputs[2], db)
            elif op.kind in ("relu", "relu6"):
                n = int(np.prod(shape))
                dx = dy * np.unpackbits(a[f"mask:{op.outputs[0]}"], count=n).reshape(shape)
            elif op.kind == "group_norm":
                dx, dgam, dbet = bw.group_norm(dy, self.saved(x), self._value(op.inputs[1]), op.attrs["groups"], op.attrs["eps"])
                pgrad(op.inputs[1], dgam)
                pgrad(op.inputs[2], dbet)
            elif op.kind == "add":
                emit(op.inputs[1], dy)
                dx = dy
            elif op.kind == "avg_pool2d":
                dx = bw.avg_pool2d(dy, shape, op.attrs["kernel"])
            elif op.kind == "resize_bilinear":
                dx = bw.resize_bilinear(dy, shape)
            elif op.kind == "mean":
                dx = bw.mean_hw(dy, shape)
            else:
                raise TrainError(f"op {op.name}: no backward for '{op.kind}'")
            if dx is not None:
                emit(x, dx)

    # ---- one step ---------------------------------------------------------------------------------
    def gradients(self) -> dict[str, np.ndarray]:
        return {n: self.arena[f"pgrad:{n}"] for n in self.names}

    def step(self, x: np.ndarray, label: int, *, step_index: int | None = None) -> tuple[float, bool]:
        """One batch-1 update. Returns (loss, applied): applied is False when the loss or a gradient was
        not finite (the update is skipped, the parameters unchanged)."""
        t = self.updates if step_index is None else step_index
        self._now = t
        try:
            self._phase("step", 0, 1)
            logits = self.forward(x)
            loss, dlogits = bw.softmax_cross_entropy(logits, label)
            if not np.isfinite(loss):
                return loss, False
            self.backward(dlogits)
            grads = self.gradients()
            if not all(np.isfinite(v).all() for v in grads.values()):
                return loss, False
            state = {n: [self.arena[f"opt{k}:{n}"] for k in range(OPTIMIZERS[self.cfg.name])] for n in self.names}
            params, lr = self.params, lr_at(self.cfg, t)
            for k, n in enumerate(self.names):  # one parameter at a time (each update is independent of the others)
                self._phase("update", k, len(self.names))
                update(self.cfg, {n: params[n]}, grads, state, lr, self.updates + 1)
        finally:
            self._now = None
        self.updates += 1
        self._dirty = True
        return loss, True

    def predict(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """Float logits (N, classes) for int8 inputs (N, H, W, C), current parameters."""
        self.patch()
        i = self.taps.index[self.head.inputs[0]]
        w, b = self._value(self.head.inputs[1]), self._value(self.head.inputs[2])
        out = []
        for s in range(0, len(x), batch):
            _, env = self.engine.run(x[s:s + batch], intermediates=True)
            out.append(dequantize(self.engine.tensors[i], env[i]).reshape(-1, w.shape[1]) @ w.T + b)
        return np.concatenate(out) if out else np.zeros((0, w.shape[0]), np.float32)

    # ---- state for checkpoints ----------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        st = {f"param/{n}": self.arena[f"param:{n}"].copy() for n in self.names}
        for n in self.names:
            for k in range(OPTIMIZERS[self.cfg.name]):
                st[f"opt{k}/{n}"] = self.arena[f"opt{k}:{n}"].copy()
        st["updates"] = np.array(self.updates, np.int64)
        return st

    def load_state(self, st: dict[str, np.ndarray]) -> None:
        for n in self.names:
            self.arena[f"param:{n}"][...] = st[f"param/{n}"]
            for k in range(OPTIMIZERS[self.cfg.name]):
                self.arena[f"opt{k}:{n}"][...] = st[f"opt{k}/{n}"]
        self.updates = int(st["updates"])
        self._dirty = True
