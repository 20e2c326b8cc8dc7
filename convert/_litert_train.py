"""train.tflite: LiteRT's own training peer of the bundle (tinytl-b, ft-last), BUILTIN ops only.

Steps:
1. Module: the trainable parameters of our Graph become tf.Variables (float32), the frozen ones float32
   constants; Adam's two moments per trainable parameter and the step count are variables too.
2. Forward: the bundle's own emitter (convert/_tflite.emit_graph), with Primitives whose gradients are
   builtin-mappable (BuiltinGrad below), found by converting with TF's own gradients: ReluGrad,
   Relu6Grad, DepthwiseConv2dNativeBackpropInput and ResizeBilinearGrad have no TFLite builtin, and a
   grouped conv's Conv2DBackpropInput becomes a TRANSPOSE_CONV that LiteRT refuses at invoke (it has no
   groups). Those forward ops are wrapped in tf.custom_gradient; everything else keeps TF's gradient
   (GroupNorm's RsqrtGrad, BiasAddGrad, plain Conv2DBackpropInput -> TRANSPOSE_CONV all legalize).
   Gradients flow only into activations: frozen weights are constants, so the backward passes here
   give none for them (the methods served train conv biases and the classifier only; checked).
3. Signatures: train(x, y, lr) -> loss before the update (forward, softmax cross entropy, tf.GradientTape
   gradients of the variables, torch.optim.Adam update, bias corrections in float32), infer(x) -> logits,
   save() -> current trainable values, restore(**values) -> the values read back (it assigns the
   trainable values; Adam moments and step are left as they are). No file IO inside the graph: TF's
   Save/Restore ops would need Flex; the caller writes save()'s dict to .npz.
4. Convert: SavedModel -> TFLiteConverter(signature_keys, TFLITE_BUILTINS only, resource variables),
   then read the op codes of the flatbuffer and refuse any CUSTOM / Flex op.
"""
from __future__ import annotations

import math
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from device import SIGNATURES, Graph, sanitize  # the signature keys the device-side runner reads
from . import _tflite

METHODS = ("tinytl-b", "ft-last")
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam defaults, as device/optim.py


class NotBuiltinError(ValueError):
    """The converted training graph holds an op the stock LiteRT interpreter lacks (custom or Flex)."""




def _mask_grad(fwd, mask):
    """fwd(x) with d/dx = dy * mask(x): ReLU-style gates as MUL by a CAST of a comparison (TF's
    ReluGrad/Relu6Grad have no builtin). The masks are PyTorch's: relu passes x > 0, relu6 0 < x < 6."""
    def op(x, name=None):
        @tf.custom_gradient
        def f(x):
            return fwd(x, name=name), lambda dy: dy * tf.cast(mask(x), dy.dtype)
        return f(x)
    return staticmethod(op)


def _dilate(dy: tf.Tensor, s: int) -> tf.Tensor:
    """(1, H, W, C) -> (1, H s, W s, C) with s - 1 zeros after every row and column (4-D PADs only)."""
    _, h, w, c = dy.shape
    if s == 1:
        return dy
    y = tf.pad(tf.reshape(dy, (h, 1, w * c)), [[0, 0], [0, s - 1], [0, 0]])    # rows
    y = tf.pad(tf.reshape(y, (h * s * w, 1, c)), [[0, 0], [0, s - 1], [0, 0]])  # columns
    return tf.reshape(y, (1, h * s, w * s, c))


def _spread(dy: tf.Tensor, x_shape, k: int, stride: int, padding: str) -> tuple[tf.Tensor, str]:
    """dy laid out so that a stride-1 conv with the spatially flipped kernel gives d loss / d x (the
    transposed conv). SAME (stride 1, odd K): as is, SAME again (K // 2 each side). VALID: dilate by
    the stride, pad K - 1 each side plus, at the end, the rows/columns of x no output window reached
    (floor division); the s - 1 trailing zeros of the dilation already count toward that end padding."""
    if padding == "SAME":
        return dy, "SAME"
    _, h, w, _ = x_shape
    _, ho, wo, _ = dy.shape
    d = _dilate(dy, stride)
    end_h = k - 1 + (h - ((ho - 1) * stride + k)) - (stride - 1)  # rows after the dilation's zeros
    end_w = k - 1 + (w - ((wo - 1) * stride + k)) - (stride - 1)
    d = tf.pad(d, [[0, 0], [k - 1, max(end_h, 0)], [k - 1, max(end_w, 0)], [0, 0]])
    if end_h < 0 or end_w < 0:  # kernel smaller than the stride: drop the surplus zeros
        d = d[:, :d.shape[1] + min(end_h, 0), :d.shape[2] + min(end_w, 0), :]
    return d, "VALID"


def _depthwise_input_grad(dy, w, x_shape, stride: int, padding: str) -> tf.Tensor:
    """d loss / d x of depthwise_conv2d(x, w), w (K, K, C, 1): a depthwise conv, kernel flipped."""
    d, pad = _spread(dy, x_shape, int(w.shape[0]), stride, padding)
    return tf.nn.depthwise_conv2d(d, tf.reverse(w, axis=[0, 1]), [1, 1, 1, 1], pad)


def _grouped_input_grad(dy, w, x_shape, stride: int, padding: str) -> tf.Tensor:
    """d loss / d x of a grouped conv2d(x, w), w (K, K, Cin/G, Cout): the grouped conv of dy with each
    group's kernel flipped and its in/out channels swapped, (K, K, Cout/G, Cin) (one CONV_2D)."""
    k, _, cig, cout = (int(d) for d in w.shape)
    groups = int(x_shape[-1]) // cig
    wt = tf.reshape(w, (k, k, cig, groups, cout // groups))                 # [.., l, g, j]
    wt = tf.reshape(tf.transpose(wt, (0, 1, 4, 3, 2)), (k, k, cout // groups, groups * cig))
    d, pad = _spread(dy, x_shape, k, stride, padding)
    return tf.nn.conv2d(d, tf.reverse(wt, axis=[0, 1]), 1, pad)


def _interp(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) half-pixel-centre linear interpolation (PyTorch align_corners=False): out = A @ in."""
    a = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1, lam = min(i0 + 1, n_in - 1), src - i0
        a[o, i0] += 1 - lam
        a[o, i1] += lam
    return a


class BuiltinGrad(_tflite.Primitives):
    """Forward ops as in the int8 graph; backward passes made of builtin-mappable ops only."""
    relu = _mask_grad(tf.nn.relu, lambda x: x > 0)
    relu6 = _mask_grad(tf.nn.relu6, lambda x: tf.logical_and(x > 0, x < 6))

    @staticmethod
    def depthwise_conv2d(x, w, strides, padding, name=None):
        """Frozen w only (the methods here never train depthwise weights): no gradient for w."""
        @tf.custom_gradient
        def f(x):
            def grad(dy):
                return _depthwise_input_grad(dy, w, x.shape, strides[1], padding)
            return tf.nn.depthwise_conv2d(x, w, strides, padding, name=name), grad
        return f(x)

    @staticmethod
    def conv2d(x, w, stride, padding, name=None):
        """Grouped convs only (lite branches' conv1): TF's Conv2DBackpropInput becomes a TRANSPOSE_CONV,
        which LiteRT runs without groups (it fails at invoke). groups 1 keeps TF's gradient. Frozen w only."""
        if int(w.shape[2]) == int(x.shape[-1]):
            return tf.nn.conv2d(x, w, stride, padding, name=name)

        @tf.custom_gradient
        def f(x):
            def grad(dy):
                return _grouped_input_grad(dy, w, x.shape, stride, padding)
            return tf.nn.conv2d(x, w, stride, padding, name=name), grad
        return f(x)

    @staticmethod
    def resize_bilinear(x, size, name=None):
        """Backward: the transpose of the separable interpolation, dx = A_h^T dy A_w per channel, as two
        MATMULs (TF's ResizeBilinearGrad has no builtin)."""
        _, h, w, c = x.shape
        ah = tf.constant(_interp(h, size[0]).T.astype(np.float32))          # (h, H)
        awt = tf.constant(_interp(w, size[1]).T[None].astype(np.float32))   # (1, w, W)

        @tf.custom_gradient
        def f(x):
            def grad(dy):
                rows = tf.reshape(tf.matmul(ah, tf.reshape(dy, (size[0], size[1] * c))), (h, size[1], c))
                return tf.reshape(tf.matmul(awt, rows), (1, h, w, c))               # (h, w, C)
            return _tflite.Primitives.resize_bilinear(x, size, name=name), grad
        return f(x)


def trainable_order(g: Graph, params: dict[str, np.ndarray]) -> list[str]:
    """The trainable parameters in the graph's parameter order: save()'s outputs, restore()'s inputs."""
    return [n for n in params if g.tensors[n].trainable]


class TrainModule(tf.Module):
    def __init__(self, g: Graph, params: dict[str, np.ndarray], prims: type = BuiltinGrad):
        super().__init__()
        self.g, self.prims = g, prims
        self.names = trainable_order(g, params)
        weights = {i for op in g.ops if op.kind in ("conv2d", "group_norm") for i in op.inputs[1:]} - {
            op.inputs[2] for op in g.ops if op.kind == "conv2d"}  # conv weights, GroupNorm scale and shift
        if weights & set(self.names):
            raise ValueError(f"train.tflite trains conv biases and the classifier only, not {sorted(weights & set(self.names))[:3]}")
        self.vars = {n: tf.Variable(params[n].astype(np.float32), name=sanitize(n)) for n in self.names}
        self.m = {n: tf.Variable(tf.zeros_like(params[n], tf.float32), name=sanitize(n) + "_m") for n in self.names}
        self.v = {n: tf.Variable(tf.zeros_like(params[n], tf.float32), name=sanitize(n) + "_v") for n in self.names}
        self.t = tf.Variable(0.0, name="adam_step")  # float32: it only feeds the bias corrections' POW
        self.c = {n: self.vars[n] if n in self.vars else tf.constant(v.astype(np.float32)) for n, v in params.items()}
        shape = g.tensors[g.inputs[0]].shape  # (1, H, W, C)
        self.classes = g.tensors[g.outputs[0]].shape[-1]
        x = tf.TensorSpec(shape, tf.float32, name="x")
        fn = lambda f, *sig: tf.function(f, input_signature=list(sig), autograph=False)  # no tensor-dependent Python control flow
        self.train = fn(self._train, x, tf.TensorSpec((1,), tf.int32, name="y"), tf.TensorSpec((), tf.float32, name="lr"))
        self.infer = fn(self._infer, x)
        self.save = fn(self._save)
        self.restore = fn(self._restore, *(tf.TensorSpec(params[n].shape, tf.float32, name=sanitize(n)) for n in self.names))

    def _logits(self, x):
        return _tflite.emit_graph(self.g, self.c, x, self.prims)

    def _train(self, x, y, lr):
        with tf.GradientTape() as tape:
            logits = self._logits(x)
            # F.cross_entropy: mean over the batch (1) of -log_softmax[y]
            loss = -tf.reduce_sum(tf.one_hot(y, self.classes) * tf.nn.log_softmax(logits)) / logits.shape[0]
        grads = tape.gradient(loss, [self.vars[n] for n in self.names])
        t = self.t.assign_add(1.0)
        b1, b2 = BETAS
        step = lr / (1.0 - tf.pow(b1, t))              # torch: lr / bias_correction1
        c2 = tf.sqrt(1.0 - tf.pow(b2, t))              # torch: sqrt(bias_correction2)
        for n, gr in zip(self.names, grads):
            m = self.m[n].assign(b1 * self.m[n] + (1.0 - b1) * gr)
            v = self.v[n].assign(b2 * self.v[n] + (1.0 - b2) * gr * gr)
            self.vars[n].assign_sub(step * m / (tf.sqrt(v) / c2 + EPS))
        return {"loss": loss}

    def _infer(self, x):
        return {"logits": self._logits(x)}

    def _save(self):
        return {sanitize(n): tf.identity(self.vars[n]) for n in self.names}

    def _restore(self, *values):
        # returns the values read back: with no outputs the converter drops the ASSIGN_VARIABLEs (measured)
        return {sanitize(n): self.vars[n].assign(val).read_value() for n, val in zip(self.names, values)}


def convert_training(g: Graph, params: dict[str, np.ndarray], prims: type = BuiltinGrad) -> bytes:
    """train.tflite of g (trainable flags set, BN folded); NotBuiltinError if an op is not a TFLite builtin."""
    mod = TrainModule(g, params, prims)
    with tempfile.TemporaryDirectory() as d:
        # the custom gradients are already inside train's graph: saving them again only costs time (~40%)
        tf.saved_model.save(mod, d, signatures={k: getattr(mod, k).get_concrete_function() for k in SIGNATURES},
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        conv = tf.lite.TFLiteConverter.from_saved_model(d, signature_keys=list(SIGNATURES))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        conv.experimental_enable_resource_variables = True
        model = conv.convert()
    bad = sorted(n for n in op_names(model) if n.startswith("CUSTOM"))
    if bad:
        raise NotBuiltinError(f"train.tflite: non-builtin ops {bad}; the stock LiteRT interpreter cannot run them")
    return model


def op_names(model: bytes) -> set[str]:
    """Every operator code the flatbuffer declares (all subgraphs: train, infer, save, restore and the
    variables' initializer), as builtin names; custom and Flex ops as 'CUSTOM:<code>'."""
    from tensorflow.lite.python import schema_py_generated as fb
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAs(model, 0))
    out = set()
    for oc in m.operatorCodes:
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)  # builtin_code supersedes the deprecated byte
        name = names.get(code, f"BUILTIN_{code}")
        out.add(f"CUSTOM:{(oc.customCode or b'').decode()}" if name == "CUSTOM" else name)
    return out
