"""What one update step costs on a target, from the graph's shapes: multiply-accumulates (MACs), which the
profile's int8 MAC rate turns into a latency estimate (and its power into energy)."""
from __future__ import annotations

import numpy as np

from device import Trainer


def _conv_macs(g, op) -> int:
    kh, kw, cig, _ = g.tensors[op.inputs[1]].shape
    return int(np.prod(g.tensors[op.outputs[0]].shape)) * kh * kw * cig


def step_macs(tr: Trainer) -> dict[str, int]:
    """MACs of one update step from the graph's shapes: forward (every conv / FC), backward (input gradients
    where they flow, weight gradients where weights train; bias gradients are sums, not counted)."""
    g = tr.graph
    fwd = bwd = 0
    for op in g.ops:
        if op.kind == "conv2d":
            fwd += _conv_macs(g, op)
        elif op.kind == "fully_connected":
            fwd += int(np.prod(g.tensors[op.inputs[1]].shape))
    for op in tr.bwd:
        if op.kind not in ("conv2d", "fully_connected"):
            continue
        m = _conv_macs(g, op) if op.kind == "conv2d" else int(np.prod(g.tensors[op.inputs[1]].shape))
        bwd += m * ((op.inputs[0] in tr.req) + (op.inputs[1] in tr.slots))
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}
