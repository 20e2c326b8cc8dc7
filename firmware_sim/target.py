"""The device runtime as a given target: frozen weights in read-only flash, the step's arena of exactly the budget,
MAC counts for the latency estimate, and the update step planned for any trainable set (numpy + device/ only).

    tr = build_trainer(bundle, profile, optim)   # plan checked against the profile BEFORE any arena exists
    flash = place_weights(tr, profile)           # engine constants become read-only views of one flash image
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from device.bundle import Bundle
from device.graph import group_norm_params, unit_of, units  # noqa: F401  unit_of, units: fit.py, tests
from device.graph import last_units as last_k  # noqa: F401  run.py, fit.py, tests
from device.optim import OptimConfig
from device.planner import BudgetError, Plan, check_budget, plan_greedy
from device.trainer import Trainer

from .profiles import Profile


MAX_ARENA = 16 * 2 ** 20  # bytes: budgets up to this are allocated whole (every MCU)
GUARD = 64 * 1024         # bytes past the plan's peak (holding a canary) when the budget is larger


class FlashError(ValueError):
    """The bundle's frozen weights do not fit the target's flash (or DRAM)."""


class FlashWriteFault(RuntimeError):
    """Something wrote to flash while the model ran: on the chip a bus fault."""


class Flash:
    """One read-only byte image holding every constant tensor of the .tflite, 16-byte aligned, like the
    weights section of a firmware image. `views` are non-writeable ndarrays into it: a write raises."""

    def __init__(self, arrays: dict[int, np.ndarray]):
        offsets, cursor = {}, 0
        for i, a in arrays.items():
            offsets[i] = cursor
            cursor = -(-(cursor + a.nbytes) // 16) * 16
        image = np.zeros(max(cursor, 1), np.uint8)
        for i, a in arrays.items():
            image[offsets[i]:offsets[i] + a.nbytes] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        image.flags.writeable = False
        self.image, self.offsets, self.size = image, offsets, cursor
        self.views = {i: image[offsets[i]:offsets[i] + a.nbytes].view(a.dtype).reshape(a.shape) for i, a in arrays.items()}
        self.sha256 = self.digest()

    def digest(self) -> str:
        return hashlib.sha256(self.image.tobytes()).hexdigest()

    def verify(self) -> None:
        if self.digest() != self.sha256:
            raise FlashWriteFault("the flash image changed during the run")


def weight_bytes(tr: Trainer) -> int:
    """Bytes of the .tflite's constant tensors (int8 weights, int32 biases), as placed in flash."""
    return sum(-(-t.data.nbytes // 16) * 16 for t in tr.engine.tensors if t.data is not None)


def check_weights(bundle: Bundle, need: int, profile: Profile) -> None:
    """FlashError unless `need` bytes of frozen weights fit the target's flash (MCU) or DRAM (Linux)."""
    region = profile.weight_region
    budget = profile.budgets[region]
    if need > budget:
        raise FlashError(f"bundle {bundle.path}: its frozen weights take {need} bytes ({need / 1024:.1f} KB), "
                         f"the {profile.name} {region} budget is {budget} bytes ({budget / 1024:.1f} KB: "
                         f"{profile.memory[region]} minus {profile.reserved.get(region, 0)} reserved); a smaller model "
                         f"or resolution is needed")


class ModelFlash(Flash):
    """The step program's flash: the .tflite bytes the C core / numpy executor read frozen constants from (a
    read-only array, nothing copied out of it); verify() checks after the run that nothing wrote there."""

    def __init__(self, model: np.ndarray, size: int):
        self.image, self.size, self.offsets, self.views = model, size, {}, {}
        self.sha256 = self.digest()


def place_weights(tr: Trainer, profile: Profile) -> Flash | ModelFlash:
    """Move every constant the engine reads into one read-only image and re-prepare the kernels on it
    (Engine.set_constants: the kernels' derived caches, e.g. float64 matrices for the exact BLAS path, are
    host speed-ups of reading flash). Trainable slots are re-encoded into RAM by the trainer's patch().
    The trainer's dequantized float copies of frozen weights (read by backward) become read-only too."""
    eng = tr.engine
    consts = {t.index: t.data for t in eng.tensors if t.data is not None}
    need = sum(-(-a.nbytes // 16) * 16 for a in consts.values())
    check_weights(tr.bundle, need, profile)
    if hasattr(tr, "program"):  # the step program reads constants where they sit in the read-only model buffer
        tr.model.flags.writeable = False
        return ModelFlash(tr.model, need)
    flash = Flash(consts)
    eng.set_constants({i: (v, None) for i, v in flash.views.items()})
    for v in tr.frozen.values():
        v.flags.writeable = False
    tr._dirty = True  # re-encode the trainable slots (out of flash, into RAM) before the first forward
    return flash


def budgets_for(profile: Profile, weights: int = 0) -> dict[str, int]:
    """The step arena's budget: SRAM (MCU), or DRAM less the weights that share it (Linux)."""
    region = profile.step_region
    b = profile.budgets[region]
    return {region: b - (weights if profile.weight_region == region else 0)}


def build_trainer(bundle: Bundle, profile: Profile, optim: OptimConfig, *, weights: int | None = None,
                  engine: str | None = None, firmware=None, keep_flash: bytes | None = None) -> Trainer:
    """A Trainer whose plan was checked against the profile before any arena existed (BudgetError otherwise,
    carrying .plan), then moved into an arena of exactly the budget (MCU) or the plan plus a guard zone (board).
    engine: "native" (the step program on the C core), "numpy" (the same program on numpy), None: native if built;
    firmware: an image folder (`firmware_sim build`): the program runs on the emulated MCU instead (keep_flash: its
    checkpoint slots from before a power cut: flash keeps them)."""
    from device import make_trainer
    region = profile.step_region
    if weights is None:
        weights = _const_bytes(bundle)
    budgets = budgets_for(profile, weights)
    if firmware is not None:   # the step program runs on the emulated chip (the image in `firmware`)
        from .emulated import EmulatedTrainer
        tr = EmulatedTrainer(bundle, optim, firmware, keep_flash=keep_flash, budgets=budgets, region=region)
    else:
        tr = make_trainer(bundle, optim, budgets=budgets, region=region, engine=engine)
    from device.memplan import Arena
    state = tr.state()
    # an MCU's arena is exactly its budget; a board's DRAM budget (hundreds of MB) gets the plan plus a guard zone
    capacity = {r: b if b <= MAX_ARENA else tr.plan.peak[r] + GUARD for r, b in budgets.items()}
    tr.arena = Arena(tr.plan, tr.specs, capacity=capacity)
    tr.load_state(state)
    tr.budgets = budgets
    return tr


def _const_bytes(bundle: Bundle) -> int:
    from device.tflite_reader import read_tflite
    return sum(-(-t.data.nbytes // 16) * 16 for t in read_tflite(bundle.tflite_path).tensors if t.data is not None)


# ---- MACs -----------------------------------------------------------------------------------------

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


# ---- trainable sets: the same bundle planned with other parameters learning ------------------------

def with_trainables(bundle: Bundle, names: list[str]) -> Bundle:
    """The bundle with exactly `names` trainable (graph names). Names the bundle does not train (frozen
    conv weights for FT-Full, say) get a slot from the .tflite and their dequantized value, so the device's
    own buffer rules plan them: float32 parameter, gradient and optimizer state in SRAM, input saved.
    A GroupNorm parameter the bundle trains but `names` leaves out joins Bundle.frozen with its shipped value
    (the backward through a frozen GroupNorm needs its gamma)."""
    g = bundle.graph
    have = {p["name"]: p for p in bundle.spec["params"]}
    missing = [n for n in names if n not in g.tensors or not g.tensors[n].const]
    if missing:
        raise KeyError(f"not parameters of the bundle's graph: {missing[:3]}")
    extra = [n for n in names if n not in have]
    values = dict(bundle.trainable)
    params = []
    if extra:
        from device.engine import Engine
        from device.taps import Taps
        eng = Engine(bundle.tflite_path)
        taps = Taps(g, eng, bundle.frozen)
        users = {i: (op, pos) for op in g.ops for pos, i in enumerate(op.inputs)}
    for n in names:
        if n in have:
            params.append(have[n])
            continue
        op, pos = users[n]
        shape = g.tensors[n].shape
        slot, values[n] = None, bundle.frozen.get(n, np.zeros(shape, np.float32))  # None: planned only (no place in the int8 graph)
        if op.kind in ("conv2d", "fully_connected"):
            top = taps.tflite_op(op.outputs[0])
            ti = top.inputs[pos] if pos < len(top.inputs) else -1
            if ti >= 0 and eng.tensors[ti].data is not None:
                values[n] = taps.frozen_param(op, pos) if pos == 1 else _bias_value(eng, ti, shape)
                slot = {"op": eng.model.ops.index(top), "input": pos, "tensor": ti, "dtype": np.dtype(eng.tensors[ti].dtype).name,
                        "layout": "conv_weight" if op.kind == "conv2d" and pos == 1 else "plain"}
        params.append({"name": n, "shape": list(shape), "dtype": "float32", "op": op.outputs[0], "slot": slot})
    keep = set(names)
    tensors = {k: dataclasses.replace(t, trainable=k in keep) for k, t in g.tensors.items()}
    graph = dataclasses.replace(g, tensors=tensors)
    spec = dict(bundle.spec, params=params)
    manifest = dict(bundle.manifest, trainable=[{"name": p["name"], "shape": p["shape"], "dtype": "float32"} for p in params])
    norm_params = group_norm_params(g)
    frozen = dict(bundle.frozen) | {n: v for n, v in bundle.trainable.items() if n not in keep and n in norm_params}
    return Bundle(bundle.path, manifest, graph, {n: values[n] for n in names}, spec, frozen)


def plan_only(bundle: Bundle) -> list[str]:
    """Trainable names without a place in the int8 graph: such a bundle can be planned, not run."""
    return [p["name"] for p in bundle.spec["params"] if p["slot"] is None]


def _bias_value(eng, ti: int, shape) -> np.ndarray:
    from device.taps import dequantize
    t = eng.tensors[ti]
    return np.asarray(dequantize(t, t.data), np.float32).reshape(shape)


def method_names(bundle: Bundle, method: str) -> list[str]:
    """Graph parameter names a method trains on this bundle's graph."""
    g = bundle.graph
    params = [n for n, t in g.tensors.items() if t.const]
    head = [n for n in params if unit_of(n) == "classifier"]
    if method == "ft-last":
        return head
    if method == "tinytl-b":
        return [n for n in params if n.endswith(".bias") and ".lite." not in n and unit_of(n) != "classifier"] + head
    if method == "tinytl-lb":
        return [n for n in params if (n.endswith(".bias") and ".lite." not in n and unit_of(n) != "classifier")
                or ".lite." in n] + head
    if method == "ft-full":
        return params
    raise KeyError(f"method '{method}': choose ft-last, tinytl-b, tinytl-lb or ft-full")


def plan_for(bundle: Bundle, names: list[str], optim: OptimConfig, region: str = "sram") -> Plan:
    """The device's plan of the update step with `names` trainable, without allocating it: a zero budget makes
    the Trainer raise (carrying its plan) before it builds an arena."""
    b = with_trainables(bundle, names)
    try:
        Trainer(b, optim, planner=plan_greedy, budgets={region: 0}, region=region)
    except BudgetError as e:
        return e.plan
    raise AssertionError("unreachable: a non-empty plan cannot fit 0 bytes")


def fits(plan: Plan, budgets: dict[str, int]) -> bool:
    try:
        check_budget(plan, budgets)
        return True
    except BudgetError:
        return False
