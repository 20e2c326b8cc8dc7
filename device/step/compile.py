"""Compile one update step into a program: the Trainer's plan (device/memplan.py) gives every buffer its arena
offset; the .tflite gives every frozen constant its offset in the model buffer; the instructions are:

  1. forward: each .tflite op in order (device/step/fwd_*.py encoders), the classifier's int8 op left out (the
     loss uses the float head); after the op producing a tensor backward needs, a copy into its saved buffer
     or its 1-bit ReLU mask (the Trainer's forward hook, made static)
  2. head: the float classifier on the saved int8 features -> logits; softmax cross entropy -> d logits
  3. backward: the graph ops that need a gradient, last op first (device/step/bwd.py), gradients assigned the
     first time a buffer is written and accumulated after (decided here, once)
  4. a non-finite check of every parameter gradient, then SGD or Adam on every parameter, then `applied`

Sections: "forward" (1) and "head" (the float head alone) make `predict`; the whole list is one step.
What it compiles: trainable int8-conv biases (encoded per channel by the conv kernel), float lite-branch
weights, GroupNorm gamma/beta (read where they sit in the arena) and the float classifier: TinyTL-B, TinyTL-L,
L+B, FT-Last and their `--trainable-blocks` subsets. A trainable int8 conv weight (FT-Full, which cannot be an
int8 bundle anyway) is refused with a ProgramError naming it.
"""
from __future__ import annotations

import numpy as np

from ..kernels import UnsupportedOpError
from ..kernels._common import quantized_activation_range
from ..optim import OptimConfig
from ..requant import bias_scale
from . import bwd, bwd_encode, core, fwd_extra, fwd_float, fwd_int8  # noqa: F401  (each registers its ops)
from .program import ARENA, MODEL, NONE, Instr, Program, ProgramError, Ref

ENCODERS = {**fwd_int8.ENCODERS, **fwd_float.ENCODERS, **fwd_extra.ENCODERS}


class _Operands:
    """Where the forward's tensors live: activations in the arena, constants in the model buffer, trainable
    biases as their float32 parameter in the arena (encoded per channel by the kernel)."""

    def __init__(self, tr):
        self.tr, self.tensors = tr, tr.engine.tensors
        self.slot_of = {s["tensor"]: n for n, s in tr.slots.items()}

    def arena(self, name: str) -> Ref:
        s = self.tr.specs[name]
        if s.buffer.kind == "mask":  # one bit per element, packed (np.packbits order)
            return Ref(ARENA, self.tr.plan.offsets[name], "uint8", (s.buffer.size,))
        return Ref(ARENA, self.tr.plan.offsets[name], s.dtype, s.shape)

    def ref(self, i: int) -> Ref:
        if i < 0:
            return NONE
        t = self.tensors[i]
        if i in self.slot_of:  # a trainable float32 parameter read by a float-island op: its arena bytes
            n = self.slot_of[i]
            slot = self.tr.slots[n]
            if slot["dtype"] != "float32" or slot["layout"] != "plain":
                raise ProgramError(f"trainable parameter '{n}' (.tflite tensor #{i} '{t.name}', {slot['dtype']}, "
                                   f"{slot['layout']}) is read by .tflite op {slot['op']} {slot['op_name']} as a "
                                   "constant: the step program has no kernel reading it from the arena")
            return Ref(ARENA, self.tr.plan.offsets[f"param:{n}"], "float32", tuple(t.shape))
        if t.data is None:
            return self.arena(f"act:{i}")
        return Ref(MODEL, int(t.offset), np.dtype(t.dtype).name, tuple(t.shape))

    def filter(self, i: int) -> tuple[Ref, int]:
        """A float conv filter: (Ref, layout) with layout 0 = OHWI in the model, 1 = HWIO, a trainable weight
        in the arena in the graph's layout (device/graph.py)."""
        if i in self.slot_of and self.tr.slots[self.slot_of[i]]["layout"] == "conv_weight":
            n = self.slot_of[i]
            return Ref(ARENA, self.tr.plan.offsets[f"param:{n}"], "float32", tuple(self.tr.graph.tensors[n].shape)), 1
        return self.ref(i), 0

    def bias(self, i: int):
        if i < 0:
            return NONE, 0, None
        if i not in self.slot_of:
            return self.ref(i), 0, None
        n = self.slot_of[i]
        op = self.tr.engine.model.ops[self.tr.slots[n]["op"]]
        w = self.tensors[op.inputs[1]]
        x = self.tensors[op.inputs[0]]
        scale = bias_scale(float(x.quant.scale[0]), np.broadcast_to(w.quant.scale, (self.tensors[i].shape[0],)))
        return self.arena(f"param:{n}"), 1, scale.astype(np.float32)


def encode_ops(model, at, keep: set[int], skip=None):
    """Yield (last .tflite op, its instructions) for the model's ops in order, `skip` left out. A GroupNorm chain
    whose intermediates are read by no one else (not by another op, not in `keep`: saved for backward or a
    model output) becomes one fused instruction (fwd_float.fuse_group_norm); every other op encodes alone."""
    ops, tensors = model.ops, model.tensors
    consumers: dict[int, set[int]] = {}
    for k, op in enumerate(ops):
        for i in op.inputs:
            consumers.setdefault(i, set()).add(k)

    def private(inner, positions) -> bool:
        return all(t not in keep and consumers.get(t, set()) <= positions for t in inner)

    k = 0
    while k < len(ops):
        op = ops[k]
        if op is skip:
            k += 1
            continue
        fused = fwd_float.fuse_group_norm(ops, k, tensors, at, private)
        if fused is not None:
            n, ins = fused
            yield ops[k + n - 1], ins
            k += n
            continue
        t0 = tensors[op.inputs[0]] if op.inputs and op.inputs[0] >= 0 else None
        enc = ENCODERS.get((op.name, t0.type if t0 is not None else ""))
        if enc is None:
            raise UnsupportedOpError(op, tensors, "no step-program kernel for this op and input type")
        ins = enc(op, tensors, at)
        for i in ins:
            i.note = i.note or f".tflite op #{op.index} {op.name}"
        yield op, ins
        k += 1


def compile_step(tr, optim: OptimConfig) -> Program:
    """The step program of Trainer `tr` (its plan, graph and bundle)."""
    eng, g, taps, at = tr.engine, tr.graph, tr.taps, _Operands(tr)
    instrs: list[Instr] = []
    saves: dict[int, list[str]] = {}
    for name in tr.specs:
        kind, _, tensor = name.partition(":")
        if kind in ("saved", "mask"):
            saves.setdefault(taps.index[tensor], []).append(name)

    def save(i: int) -> None:
        for name in saves.get(i, ()):
            src, dst = at.arena(f"act:{i}"), at.arena(name)
            if name.startswith("saved:"):
                instrs.append(Instr("copy", dict(n=src.nbytes, src=Ref(ARENA, src.offset, "uint8", (src.nbytes,)),
                                                 dst=Ref(ARENA, dst.offset, "uint8", (dst.nbytes,))), f"save {name}"))
            else:
                instrs.append(_mask(tr, name[5:], i, src, dst))

    head_top = taps.tflite_op(tr.head.outputs[0])
    for i in eng.model.inputs:
        save(i)
    keep = set(saves) | set(eng.model.outputs)
    for last, ins in encode_ops(eng.model, at, keep, skip=head_top):  # the int8 classifier: the loss and
        instrs += ins                                                  # predict use the float head
        for o in last.outputs:
            save(o)
    forward_end = len(instrs)

    # ---- head and loss ------------------------------------------------------------------------------------
    h = tr.head
    x_t = eng.tensors[taps.index[h.inputs[0]]]
    for p in (h.inputs[1], h.inputs[2]):
        if p not in tr.slots:
            raise ProgramError(f"classifier parameter '{p}' is frozen: this runtime compiles a trainable float head only")
    if x_t.dtype != np.int8:
        raise ProgramError(f"classifier input '{h.inputs[0]}' is {np.dtype(x_t.dtype).name}: int8 expected")
    cout, cin = g.tensors[h.inputs[1]].shape
    logits = at.arena("logits")
    instrs.append(Instr("head", dict(cin=cin, cout=cout, x=at.arena(f"saved:{h.inputs[0]}"), w=at.arena(f"param:{h.inputs[1]}"),
                                     b=at.arena(f"param:{h.inputs[2]}"), y=logits, scale=float(x_t.quant.scale[0]),
                                     zp=int(x_t.quant.zero_point[0])), "float classifier"))
    head_end = len(instrs)
    instrs.append(Instr("softmax_ce", dict(n=cout, z=logits, d=at.arena(f"grad:{tr.gbuf[h.outputs[0]]}")), "loss"))

    # ---- backward -------------------------------------------------------------------------------------------
    written = {h.outputs[0]}

    def grad(t: str) -> Ref:
        return at.arena(f"grad:{tr.gbuf[t]}")

    def target(t: str):
        """(ref, acc) of the gradient buffer an op writes tensor t's gradient into, or (NONE, 0) if t needs none."""
        if t not in tr.req:
            return NONE, 0
        acc = int(t in written)
        written.add(t)
        return grad(t), acc

    backward_start = len(instrs)
    for op in tr.bwd:
        for ins in bwd_encode.encode(op, tr, at, grad(op.outputs[0]), target):
            ins.note = ins.note or f"backward of {op.name} ({op.kind})"
            instrs.append(ins)

    # ---- update ---------------------------------------------------------------------------------------------
    update_start = len(instrs)
    for n in tr.names:
        pg = at.arena(f"pgrad:{n}")
        instrs.append(Instr("check_finite", dict(n=int(np.prod(pg.shape)), g=pg), f"check {n}"))
    for n in tr.names:
        p, pg = at.arena(f"param:{n}"), at.arena(f"pgrad:{n}")
        size = int(np.prod(p.shape))
        if optim.name == "sgd":
            instrs.append(Instr("sgd", dict(n=size, p=p, g=pg, buf=at.arena(f"opt0:{n}"), momentum=optim.momentum), f"sgd {n}"))
        else:
            b1, b2 = optim.betas
            instrs.append(Instr("adam", dict(n=size, p=p, g=pg, m1=at.arena(f"opt0:{n}"), m2=at.arena(f"opt1:{n}"),
                                             beta1=b1, beta2=b2, a1=np.float32(1 - b1), a2=np.float32(1 - b2),
                                             eps=optim.eps), f"adam {n}"))
    instrs.append(Instr("applied", {}, "step done"))
    model = tr.bundle.tflite_path.read_bytes()
    return Program(instrs, arena_bytes=tr.plan.peak[tr.region], model=model,
                   sections={"forward": (0, forward_end), "head": (forward_end, head_end), "step": (0, len(instrs)),
                             "backward": (backward_start, update_start), "update": (update_start, len(instrs))})


def _mask(tr, tensor: str, i: int, src: Ref, dst: Ref) -> Instr:
    kind = tr.graph.producer(tensor).kind
    t = tr.engine.tensors[i]
    n = int(np.prod(src.shape))
    if src.dtype == "float32":
        return Instr("mask_f32", dict(n=n, src=src, dst=dst, lo=0.0, hi=6.0 if kind == "relu6" else float("inf")), f"mask of {tensor}")
    s, z = float(t.quant.scale[0]), int(t.quant.zero_point[0])
    lo, hi = quantized_activation_range("RELU6" if kind == "relu6" else "RELU", np.float32(s), z, np.int8)
    return Instr("mask_s8", dict(n=n, src=src, dst=dst, lo=lo, hi=hi), f"mask of {tensor}")
