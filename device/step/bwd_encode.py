"""Graph op -> backward instructions (the ops themselves: device/step/bwd.py, C twins in bwd.c).

Frozen conv weights are referenced where they sit in the .tflite (int8 OHWI / depthwise 1HWC with per-channel
scales, or float32 in a float island) and dequantized by the kernel as it goes; frozen GroupNorm gamma travels
inline in the instruction (the bundle ships it beside the .tflite, 4 bytes per channel).
"""
from __future__ import annotations

import numpy as np

from .bwd import resize_table
from .program import NONE, Instr, ProgramError


def _trainable(tr, op, pos: int) -> bool:
    return op.inputs[pos] in tr.slots


def encode(op, tr, at, dy, target) -> list[Instr]:
    """Instructions for the backward of graph op `op`. dy: the Ref of its output's gradient; target(t) -> (Ref, acc)
    of tensor t's gradient buffer (NONE when t needs no gradient), acc 1 when something was written there before."""
    g, eng, taps = tr.graph, tr.engine, tr.taps
    x = op.inputs[0]
    shape = g.tensors[x].shape
    out: list[Instr] = []
    if op.kind == "conv2d":
        kh, kw, cig, co = g.tensors[op.inputs[1]].shape
        _, h, w, cin = shape
        _, oh, ow, _ = g.tensors[op.outputs[0]].shape
        s, (pt, _pb, pl, _pr), groups = op.attrs["stride"], op.attrs["pad"], op.attrs["groups"]
        depthwise = groups == cin == co and cig == 1
        geo = dict(h=h, w=w, oh=oh, ow=ow, kh=kh, kw=kw, stride=s, pad_top=pt, pad_left=pl)
        geo_dense = dict(geo, cin=cin, cout=co, groups=groups)
        geo_dw = dict(geo, c=cin)
        top = taps.tflite_op(op.outputs[0])
        if depthwise and top.name != "DEPTHWISE_CONV_2D":
            raise ProgramError(f"{op.name}: depthwise in the graph but {top.name} in the .tflite")
        if _trainable(tr, op, 1):              # a float lite-branch weight: in the arena, the graph's layout (HWIO)
            wref = at.arena(f"param:{op.inputs[1]}")
            wkind, wscale, wzp = 2, np.zeros(0, np.float32), 0
            xs = at.arena(f"saved:{x}")
            xt = eng.tensors[taps.index[x]]
            xq = dict(xkind=1 if xt.type == "INT8" else 0, xscale=float(xt.quant.scale[0]) if xt.type == "INT8" else 0.0,
                      xzp=int(xt.quant.zero_point[0]) if xt.type == "INT8" else 0)
            dw = at.arena(f"pgrad:{op.inputs[1]}")
            if depthwise:
                out.append(Instr("dwconv_dw", dict(geo_dw, x=xs, dy=dy, dw=dw, **xq)))
            else:
                out.append(Instr("conv_dw", dict(geo_dense, x=xs, dy=dy, dw=dw, **xq)))
        else:                                  # frozen: read where it sits in the .tflite, dequantized as it goes
            wt = eng.tensors[top.inputs[1]]
            wref = at.ref(top.inputs[1])
            wkind = 0 if wt.type == "INT8" else 1
            wscale = wt.quant.scale.astype(np.float32) if wkind == 0 else np.zeros(0, np.float32)
            wzp = int(wt.quant.zero_point[0]) if wkind == 0 else 0
        if _trainable(tr, op, 2):
            out.append(Instr("bias_grad", dict(npos=oh * ow, c=co, dy=dy, db=at.arena(f"pgrad:{op.inputs[2]}"))))
        dx, acc = target(x)
        if dx is not NONE:
            if depthwise:
                out.append(Instr("dwconv_dx", dict(geo_dw, wkind=wkind, acc=acc, dy=dy, wt=wref, dx=dx, wscale=wscale, wzp=wzp)))
            else:
                out.append(Instr("conv_dx", dict(geo_dense, wkind=wkind, acc=acc, dy=dy, wt=wref, dx=dx, wscale=wscale, wzp=wzp)))
    elif op.kind == "fully_connected":
        if not (_trainable(tr, op, 1) and _trainable(tr, op, 2)):
            raise ProgramError(f"{op.name}: a frozen classifier is not compiled by this runtime (it trains in every method)")
        cout, cin = g.tensors[op.inputs[1]].shape
        xt = eng.tensors[taps.index[x]]
        dx, acc = target(x)
        out.append(Instr("fc_bwd", dict(cin=cin, cout=cout, acc=acc, dy=dy, w=at.arena(f"param:{op.inputs[1]}"),
                                        x=at.arena(f"saved:{x}"), dx=dx, dw=at.arena(f"pgrad:{op.inputs[1]}"),
                                        db=at.arena(f"pgrad:{op.inputs[2]}"), xscale=float(xt.quant.scale[0]),
                                        xzp=int(xt.quant.zero_point[0]))))
    elif op.kind in ("relu", "relu6"):
        dx, acc = target(x)
        if dx is not NONE:
            out.append(Instr("relu_bwd", dict(n=int(np.prod(shape)), acc=acc, dy=dy, mask=at.arena(f"mask:{op.outputs[0]}"), dx=dx)))
    elif op.kind == "group_norm":
        _, h, w, c = shape
        xt = eng.tensors[taps.index[x]]
        xkind = 1 if xt.type == "INT8" else 0
        dx, acc = target(x)
        gamma_trains, beta_trains = _trainable(tr, op, 1), _trainable(tr, op, 2)
        if dx is not NONE or gamma_trains or beta_trains:
            out.append(Instr("group_norm_bwd", dict(
                hw=h * w, c=c, groups=op.attrs["groups"], xkind=xkind, acc=acc, x=at.arena(f"saved:{x}"), dy=dy, dx=dx,
                gamma_ref=at.arena(f"param:{op.inputs[1]}") if gamma_trains else NONE,
                dgamma=at.arena(f"pgrad:{op.inputs[1]}") if gamma_trains else NONE,
                dbeta=at.arena(f"pgrad:{op.inputs[2]}") if beta_trains else NONE, eps=float(op.attrs["eps"]),
                gamma=np.zeros(0, np.float32) if gamma_trains else taps.frozen_param(op, 1),
                xscale=float(xt.quant.scale[0]) if xkind else 0.0, xzp=int(xt.quant.zero_point[0]) if xkind else 0)))
    elif op.kind == "add":
        n = int(np.prod(shape))
        for t in (op.inputs[1], x):                  # the order the numpy Trainer emits them in
            ref, acc = target(t)
            if ref is not NONE:
                out.append(Instr("grad_acc", dict(n=n, acc=acc, src=dy, dst=ref)))
    elif op.kind == "avg_pool2d":
        dx, acc = target(x)
        _, h, w, c = shape
        _, oh, ow, _ = g.tensors[op.outputs[0]].shape
        if dx is not NONE:
            out.append(Instr("avgpool_bwd", dict(h=h, w=w, c=c, oh=oh, ow=ow, k=op.attrs["kernel"], acc=acc, dy=dy, dx=dx)))
    elif op.kind == "resize_bilinear":
        dx, acc = target(x)
        _, h, w, c = shape
        _, oh, ow, _ = g.tensors[op.outputs[0]].shape
        if dx is not NONE:
            r0, r1, rl = resize_table(h, oh)
            c0, c1, cl = resize_table(w, ow)
            out.append(Instr("resize_bwd", dict(h=h, w=w, c=c, oh=oh, ow=ow, acc=acc, dy=dy, dx=dx, row_i0=r0, row_i1=r1,
                                                row_lam=rl, col_i0=c0, col_i1=c1, col_lam=cl)))
    elif op.kind == "mean":
        dx, acc = target(x)
        _, h, w, c = shape
        if dx is not NONE:
            out.append(Instr("mean_bwd", dict(h=h, w=w, c=c, acc=acc, dy=dy, dx=dx)))
    else:
        raise ProgramError(f"op {op.name}: no backward for '{op.kind}'")
    return out
