"""Where the C core's time goes: the TinyTL-B update step (and the int8 inference of the largest model), timed
one instruction at a time, aggregated by op and by phase of the program.

Method. A step program keeps all its state in the arena, so running instruction i alone, right after
instructions 0..i-1 ran, does exactly what the whole program does at i. The profiler swaps the trainer's
core for a stand-in with the same run() that calls the real core once per instruction and times each call
(`PerInstruction`); the numpy executor is timed the same way (`NumpyCore`: run_numpy over [i, i+1)). Each
call pays the ctypes crossing, measured apart (an empty range) and reported, not subtracted. Validity is
checked, not assumed: after the profiled steps the parameters and Adam state equal, bit for bit, those of a
trainer that ran the same samples one whole-program call per step; the inference outputs equal the
whole-program outputs byte for byte.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from . import _bundles as B
from .convert_fidelity import BIG_RES

PHASES = ("forward", "head", "loss", "backward", "update")  # the step program's sections, in order


class PerInstruction:
    """A core stand-in: run() executes [first, last) one instruction per call, timing each; one row of seconds
    per run() call (NaN outside its range). On the C core it calls tt_run itself with the pointers taken once,
    so a call costs the bare ctypes crossing (NativeCore.run converts its arguments on every call)."""

    def __init__(self, core, n_instr: int):
        self.core, self.n = core, n_instr
        self.rows: list[np.ndarray] = []

    def _native(self, words, arena, model, io, first: int, last: int, row: np.ndarray) -> None:
        import ctypes
        from device.native import IOStruct, NativeError
        c, where = IOStruct(io.label, io.first, io.lr, io.sqrt_c2, 0.0, 0), ctypes.c_int32(-1)
        fn = self.core.lib.tt_run
        head = (words.ctypes.data, words.size, arena.ctypes.data, arena.size, model.ctypes.data, model.size, ctypes.byref(c))
        wp = ctypes.byref(where)
        for k in range(first, last):
            t0 = time.perf_counter()
            rc = fn(*head, k, k + 1, wp)
            row[k] = time.perf_counter() - t0
            if rc:
                raise NativeError(f"C core: instruction {k}: error {rc}")
        io.loss, io.applied = float(c.loss), int(c.applied)

    def run(self, words, arena, model, io, first: int = 0, last: int = -1, notes=None) -> None:
        last = self.n if last < 0 or last > self.n else last
        row = np.full(self.n, np.nan)
        if hasattr(self.core, "lib"):
            self._native(words, arena, model, io, first, last, row)
        else:
            for k in range(first, last):
                t0 = time.perf_counter()
                self.core.run(words, arena, model, io, k, k + 1, notes)
                row[k] = time.perf_counter() - t0
        self.rows.append(row)

    def seconds(self, skip: int = 0) -> np.ndarray:
        """Per instruction: the median over the runs after the first `skip` (robust to a preempted call)."""
        return np.nanmedian(np.stack(self.rows[skip:]), axis=0)


class NumpyCore:
    """The numpy executor behind the C core's run() signature (words unused: it walks the Program itself)."""

    def __init__(self, program):
        self.program = program

    def run(self, words, arena, model, io, first: int = 0, last: int = -1, notes=None) -> None:
        from device.step.program import Memory, run_numpy
        run_numpy(self.program, Memory(arena, model, io), first, None if last < 0 else last)


def phase_of(sections: dict[str, tuple[int, int]], n: int) -> list[str]:
    """The phase of each instruction: a section of the program, "loss" between head and backward."""
    out = ["loss"] * n
    for name in ("forward", "head", "backward", "update"):
        if name in sections:
            a, b = sections[name]
            out[a:b] = [name] * (b - a)
    return out


def aggregate(ops: list[str], seconds: np.ndarray, keys: list[str] | None = None) -> list[dict]:
    """Rows {name, instructions, ms, share}: per-instruction seconds summed by op (or by `keys`), largest first."""
    keys = keys or ops
    total = float(seconds.sum()) or 1.0
    by: dict[str, list] = {}
    for key, s in zip(keys, seconds):
        r = by.setdefault(key, [0, 0.0])
        r[0] += 1
        r[1] += float(s)
    rows = [{"name": k, "instructions": n, "ms": 1e3 * s, "share": s / total} for k, (n, s) in by.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def _ctypes_overhead_ms(core, words, arena, model, calls: int = 2000) -> float:
    """ms of a PerInstruction call that runs no instruction (the ctypes crossing and the header check), median."""
    import ctypes
    from device.native import IOStruct
    c, where = IOStruct(), ctypes.c_int32(-1)
    fn = core.lib.tt_run
    head = (words.ctypes.data, words.size, arena.ctypes.data, arena.size, model.ctypes.data, model.size, ctypes.byref(c))
    wp = ctypes.byref(where)
    t = np.zeros(calls)
    for k in range(calls):
        t0 = time.perf_counter()
        fn(*head, 0, 0, wp)
        t[k] = time.perf_counter() - t0
    return 1e3 * float(np.median(t))


def _net(seconds: np.ndarray, overhead_ms: float) -> np.ndarray:
    """Per-instruction seconds less the empty call's, floored at 0."""
    return np.maximum(seconds - overhead_ms / 1e3, 0.0)


def _step_profile(warm: int, steps: int) -> dict:
    from device.bundle import load_bundle
    from device.optim import OptimConfig
    from device.step.runner import ProgramTrainer
    from .device_step import LR, same_state
    d, _, _, src = B.new_task_bundle("tinytl-b")
    make = lambda: ProgramTrainer(load_bundle(d), OptimConfig("adam", lr=LR, schedule="constant"), engine="native")  # noqa: E731
    whole, split, numpy_split = make(), make(), make()
    prog = split.program
    n = len(prog.instrs)
    c, npc = PerInstruction(split.core, n), PerInstruction(NumpyCore(numpy_split.program), n)
    split.core, numpy_split.core = c, npc
    x = B.quantized_inputs(d, warm + steps, "train")
    y = B.dataset().train.y[:warm + steps]
    whole_ms = []
    for i in range(warm + steps):  # the three in turn on each sample; the warm-up steps' times are dropped
        t0 = time.perf_counter()
        whole.step(x[i:i + 1], int(y[i]))
        whole_ms.append(1e3 * (time.perf_counter() - t0))
        split.step(x[i:i + 1], int(y[i]))
        numpy_split.step(x[i:i + 1], int(y[i]))
    assert same_state(whole.state(), split.state()) and same_state(whole.state(), numpy_split.state()), \
        "one instruction per call changed the result: the profile would not be of the real step"
    overhead = _ctypes_overhead_ms(whole.core, whole.words, whole.arena_bytes(), whole.model)
    gross = c.seconds(warm)
    sec, np_sec = _net(gross, overhead), npc.seconds(warm)
    ops = [i.op for i in prog.instrs]
    phases = phase_of(prog.sections, n)

    def with_numpy(rows: list[dict], np_rows: list[dict]) -> list[dict]:
        np_ms = {r["name"]: r["ms"] for r in np_rows}
        return [r | {"numpy_ms": np_ms[r["name"]]} for r in rows]
    by_op = with_numpy(aggregate(ops, sec), aggregate(ops, np_sec))
    by_phase = sorted(with_numpy(aggregate(ops, sec, phases), aggregate(ops, np_sec, phases)),
                      key=lambda r: PHASES.index(r["name"]))
    top = np.argsort(-sec)[:10]
    slowest = [{"index": int(k), "op": ops[k], "phase": phases[k], "note": prog.instrs[k].note,
                "ms": 1e3 * sec[k], "share": float(sec[k] / sec.sum())} for k in top]
    return {"bundle": src, "instructions": n, "warm": warm, "steps": steps,
            "whole_step_ms": statistics.median(whole_ms[warm:]), "sum_ms": 1e3 * float(sec.sum()),
            "sum_gross_ms": 1e3 * float(gross.sum()), "numpy_sum_ms": 1e3 * float(np_sec.sum()),
            "call_overhead_ms": overhead, "by_op": by_op, "by_phase": by_phase, "slowest": slowest}


def _inference_profile(name: str, d, images: int) -> dict:
    from device.step.infer import InferenceProgram
    tfl = (d / "inference.tflite").read_bytes()
    whole, split = InferenceProgram(tfl, engine="native"), InferenceProgram(tfl, engine="native")
    n = len(split.program.instrs)
    c = PerInstruction(split.core, n)
    split.core = c
    x = B.quantized_inputs(d, images + 1)
    got = split.run(x)  # one core.run per image; the first image is the warm-up
    whole.run(x[:1])
    t = []
    for k in range(1, len(x)):
        t.append(B.timed(whole.run, x[k:k + 1]))
    assert np.array_equal(got, whole.run(x)), "one instruction per call changed the inference output"
    overhead = _ctypes_overhead_ms(whole.core, whole.words, whole.arena, whole.model)
    sec = _net(c.seconds(1), overhead)
    ops = [i.op for i in split.program.instrs]
    return {"model": name, "px": int(x.shape[1]), "instructions": n, "images": images,
            "whole_ms": 1e3 * statistics.median(t), "sum_ms": 1e3 * float(sec.sum()), "call_overhead_ms": overhead,
            "by_op": aggregate(ops, sec)}


def _table(rows: list[dict], numpy: bool) -> str:
    head = "| {} | instructions | C ms per step | C % |" + (" numpy ms per step | numpy / C |" if numpy else "")
    sep = "|---|---:|---:|---:|" + ("---:|---:|" if numpy else "")
    lines = []
    for r in rows:
        line = f"| {r['name']} | {r['instructions']} | {r['ms']:.3f} | {100 * r['share']:.1f} |"
        if numpy:
            line += f" {r['numpy_ms']:.2f} | {r['numpy_ms'] / r['ms']:.0f}x |" if r["ms"] > 0 else f" {r['numpy_ms']:.2f} | - |"
        lines.append(line)
    return "\n".join([head, sep] + lines)


def run(quick: bool = False) -> str:
    from device.native import library_path, load
    if load() is None:
        return f"The C core is not built ({library_path()}; `python -m device build-native`): nothing to profile.\n"
    warm, steps, images = (2, 3, 5) if quick else (5, 20, 20)
    st = _step_profile(warm, steps)
    models = [("mcunet-tiny (random)", B.bundle("mcunet-tiny", 32)[0])] if quick else \
        [("proxylessnas-mobile (random)", B.bundle("proxylessnas-mobile", BIG_RES)[0])]
    inf = _inference_profile(*models[0], images)
    B.write_json("native_profile", {"step": st, "inference": inf})
    slow = "\n".join(f"| {r['index']} | {r['op']} | {r['phase']} | {r['note']} | {r['ms']:.3f} | {100 * r['share']:.1f} |"
                     for r in st["slowest"])
    return (f"TinyTL-B update step ({st['bundle']}, Animal-MNIST head, Adam lr 1e-3, batch 1): {st['instructions']} "
            f"instructions, each run alone on the C core right after the ones before it, over {st['steps']} training "
            f"samples after {st['warm']} warm-up steps; the numpy executor timed the same way beside it. Per "
            "instruction: the median over the samples, less the time of an empty call (the ctypes crossing, "
            f"{1e3 * st['call_overhead_ms']:.1f} us; not subtracted from numpy). Sum over the instructions: "
            f"{st['sum_ms']:.2f} ms per step ({st['sum_gross_ms']:.2f} ms before the subtraction; numpy "
            f"{st['numpy_sum_ms']:.1f} ms); the whole program in one call: {st['whole_step_ms']:.2f} ms (median). "
            "Parameters after the profiled steps equal a whole-program run's bit for bit (asserted).\n\n"
            + _table(st["by_phase"], True).format("phase") + "\n\n"
            "By op (summed over the step's instructions of that op), largest first:\n\n"
            + _table(st["by_op"], True).format("op") + "\n\n"
            "The ten slowest instructions:\n\n| # | op | phase | instruction | C ms per step | C % |\n"
            "|---:|---|---|---|---:|---:|\n" + slow + "\n\n"
            f"int8 inference of {inf['model']} at {inf['px']} px (`device.step.InferenceProgram`, engine native): "
            f"{inf['instructions']} instructions, each run alone, over {inf['images']} test images (median per "
            f"instruction, less the empty call's {1e3 * inf['call_overhead_ms']:.1f} us); sum {inf['sum_ms']:.2f} ms per "
            f"image, whole program {inf['whole_ms']:.2f} ms per image (median); outputs equal the whole-program run's byte "
            "for byte (asserted).\n\n"
            + _table(inf["by_op"], False).format("op").replace("per step", "per image") + "\n")
