"""PyTorch MobileNet -> our Graph (NHWC) + float32 params, with BatchNorm folded into every conv.

Folding: y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta  ==  conv'(x) + b'  with
W' = W * s, b' = beta - mean * s, s = gamma / sqrt(var + eps). Training beta moves b' one for one,
so the folded bias is exactly the parameter TinyTL-B trains.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from device import Graph, Op, Tensor, verify
from train import ConvBN, InvertedResidual, LiteResidual, MobileNet, UserError

# PyTorch parameter name -> graph parameter name, per module path suffix (folded BN shift = conv bias)
_BN_BIAS = ".bn.bias"


class _Builder:
    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.params: dict[str, np.ndarray] = {}

    def param(self, name: str, value: np.ndarray) -> str:
        v = np.ascontiguousarray(value, dtype=np.float32)
        self.tensors[name] = Tensor(name, tuple(int(d) for d in v.shape), "float32", const=True)
        self.params[name] = v
        return name

    def act(self, name: str, shape: tuple[int, ...]) -> str:
        self.tensors[name] = Tensor(name, tuple(int(d) for d in shape))
        return name

    def op(self, kind: str, inputs: list[str], out: str, shape: tuple[int, ...], name: str, **attrs) -> str:
        self.act(out, shape)
        self.ops.append(Op(kind, tuple(inputs), (out,), attrs, name))
        return out

    def shape(self, t: str) -> tuple[int, ...]:
        return self.tensors[t].shape


def _conv_shape(x: tuple, conv: nn.Conv2d) -> tuple:
    n, h, w, _ = x
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    return (n, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, conv.out_channels)


def _check_conv(conv: nn.Module, path: str) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise UserError(f"layer '{path}': op {type(conv).__name__} is not supported (expected Conv2d)")
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    if k[0] != k[1] or s[0] != s[1] or p != (k[0] // 2, k[1] // 2) or d != (1, 1) or conv.padding_mode != "zeros":
        raise UserError(f"layer '{path}': op Conv2d(kernel {k}, stride {s}, padding {p}, dilation {d}, {conv.padding_mode}) "
                        f"is not supported (square kernel, 'same'-style padding k//2, no dilation)")


def _conv(b: _Builder, x: str, conv: nn.Conv2d, w: np.ndarray, bias: np.ndarray, path: str, act: str) -> str:
    """Conv with weights in HWIO; padding k//2 on every side, as PyTorch (not TF's SAME at stride 2)."""
    _check_conv(conv, path)
    p = conv.padding[0]
    wname = b.param(f"{path}.weight", w.transpose(2, 3, 1, 0))  # (O, I/g, KH, KW) -> (KH, KW, I/g, O)
    bname = b.param(f"{path}.bias", bias)
    y = b.op("conv2d", [x, wname, bname], path, _conv_shape(b.shape(x), conv), path,
             stride=conv.stride[0], pad=(p, p, p, p), groups=conv.groups, act="none")
    if act != "none":
        y = b.op(act, [y], f"{path}.{act}", b.shape(y), path)
    return y


def _conv_bn(b: _Builder, x: str, m: nn.Module, path: str) -> str:
    if not isinstance(m, ConvBN) or not isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
        raise UserError(f"layer '{path}': op {type(m).__name__} is not supported (expected ConvBN: Conv2d + BatchNorm2d [+ ReLU6])")
    bn = m.bn
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double()
    w = (m.conv.weight.detach().double() * s[:, None, None, None]).numpy()
    bias = (bn.bias.detach().double() - bn.running_mean.double() * s).numpy()
    act = "none"
    if hasattr(m, "act"):
        if not isinstance(m.act, nn.ReLU6):
            raise UserError(f"layer '{path}.act': op {type(m.act).__name__} is not supported (ReLU6 only)")
        act = "relu6"
    return _conv(b, x, m.conv, w, bias, path, act)


def _group_norm(b: _Builder, x: str, gn: nn.Module, path: str) -> str:
    if not isinstance(gn, nn.GroupNorm) or not gn.affine:
        raise UserError(f"layer '{path}': op {type(gn).__name__} is not supported (affine GroupNorm only)")
    g, be = b.param(f"{path}.weight", gn.weight.detach().numpy()), b.param(f"{path}.bias", gn.bias.detach().numpy())
    return b.op("group_norm", [x, g, be], path, b.shape(x), path, groups=gn.num_groups, eps=float(gn.eps))


def _lite(b: _Builder, x: str, lite: nn.Module, out_shape: tuple, path: str) -> str:
    """pool -> group conv -> GN -> ReLU -> 1x1 conv -> GN -> bilinear resize to the main output."""
    if not isinstance(lite, LiteResidual):
        raise UserError(f"layer '{path}': op {type(lite).__name__} is not supported (expected LiteResidual)")
    y = x
    if isinstance(lite.pool, nn.AvgPool2d):
        if lite.pool.kernel_size != 2 or lite.pool.stride != 2 or lite.pool.padding != 0:
            raise UserError(f"layer '{path}.pool': op AvgPool2d({lite.pool.kernel_size}, {lite.pool.stride}) is not supported (2x2 stride 2)")
        n, h, w, c = b.shape(y)
        y = b.op("avg_pool2d", [y], f"{path}.pool", (n, -(-h // 2), -(-w // 2), c), f"{path}.pool", kernel=2)
    elif not isinstance(lite.pool, nn.Identity):
        raise UserError(f"layer '{path}.pool': op {type(lite.pool).__name__} is not supported")
    for conv_name, norm_name, relu in (("conv1", "norm1", True), ("conv2", "norm2", False)):
        conv = getattr(lite, conv_name)
        if getattr(conv, "bias", None) is not None:
            raise UserError(f"layer '{path}.{conv_name}': op Conv2d with bias is not supported in a lite branch")
        y = _conv(b, y, conv, conv.weight.detach().double().numpy(), np.zeros(conv.out_channels), f"{path}.{conv_name}", "none")
        y = _group_norm(b, y, getattr(lite, norm_name), f"{path}.{norm_name}")
        if relu:
            y = b.op("relu", [y], f"{path}.relu", b.shape(y), f"{path}.act")
    if b.shape(y) != out_shape:
        y = b.op("resize_bilinear", [y], f"{path}.resize", out_shape, f"{path}.resize", size=(out_shape[1], out_shape[2]))
    return y


def _silent(lite: nn.Module, path: str, trainable: set[str] | None) -> bool:
    """A frozen lite branch whose last GroupNorm has zero scale and shift adds exactly zero: leave it out
    (TFLite's converter would fold its constants away, and nothing on the device could learn it)."""
    if trainable is None or any(n.startswith(f"{path}.") for n in trainable):
        return False
    return not (lite.norm2.weight.detach().any() or lite.norm2.bias.detach().any())


def build_graph(model: MobileNet, resolution: int, trainable: set[str] | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """Graph + params of the eval-mode model at batch 1. Lite-branch ops carry names under '.lite.'.

    trainable: the PyTorch names of the parameters that learn on the device; when given, frozen
    zero-output lite branches are dropped.
    """
    model = model.eval()
    b = _Builder()
    x = b.act("input", (1, resolution, resolution, model.spec.in_channels))
    y = _conv_bn(b, x, model.stem, "stem")
    for i, block in enumerate(model.blocks):
        path = f"blocks.{i}"
        if not isinstance(block, InvertedResidual):
            raise UserError(f"layer '{path}': op {type(block).__name__} is not supported (expected InvertedResidual)")
        inp = y
        if block.expand is not None:
            y = _conv_bn(b, y, block.expand, f"{path}.expand")
        y = _conv_bn(b, y, block.depthwise, f"{path}.depthwise")
        y = _conv_bn(b, y, block.project, f"{path}.project")
        if block.lite is not None and not _silent(block.lite, f"{path}.lite", trainable):
            lite = _lite(b, inp, block.lite, b.shape(y), f"{path}.lite")
            y = b.op("add", [y, lite], f"{path}.add_lite", b.shape(y), path)
        if block.use_shortcut:
            y = b.op("add", [inp, y], f"{path}.add", b.shape(y), path)
    if model.head is not None:
        y = _conv_bn(b, y, model.head, "head")
    n, _, _, c = b.shape(y)
    y = b.op("mean", [y], "pool", (n, c), "pool")
    fc = model.classifier
    if not isinstance(fc, nn.Linear):
        raise UserError(f"layer 'classifier': op {type(fc).__name__} is not supported (Linear only)")
    w = b.param("classifier.weight", fc.weight.detach().numpy())
    bias = b.param("classifier.bias", fc.bias.detach().numpy() if fc.bias is not None else np.zeros(fc.out_features))
    b.op("fully_connected", [y, w, bias], "logits", (n, fc.out_features), "classifier")
    g = Graph(dict(b.tensors), tuple(b.ops), ("input",), ("logits",))
    return verify(g, b.params), b.params


def graph_param_name(torch_name: str) -> str:
    """The graph parameter a trainable PyTorch parameter becomes ('x.bn.bias' -> folded conv bias 'x.bias')."""
    if torch_name.endswith(_BN_BIAS):
        return torch_name[: -len(_BN_BIAS)] + ".bias"
    return torch_name


def mark_trainable(g: Graph, names: list[str]) -> Graph:
    """Set the trainable flag on the graph parameters the method trains; UserError if one has no graph twin."""
    import dataclasses
    wanted = {graph_param_name(n): n for n in names}
    missing = [t for gname, t in wanted.items() if gname not in g.tensors]
    if missing:
        raise UserError(f"trainable parameter(s) {missing[:3]} have no place in the int8 graph (only BatchNorm shifts, "
                        f"lite residual branches and the classifier can learn on the device)")
    tensors = {n: dataclasses.replace(t, trainable=n in wanted) for n, t in g.tensors.items()}
    return verify(Graph(tensors, g.ops, g.inputs, g.outputs))
