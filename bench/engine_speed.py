"""int8 inference at batch 1: our numpy engine and the C core (the .tflite compiled to an inference program,
device.step.InferenceProgram, engine "native") vs LiteRT (XNNPACK, its default) vs LiteRT's reference kernels,
on the same bundle's inference.tflite and the same inputs; and bit-exactness against both.

Timing: each repeat runs K test images one by one through each runtime in turn (ours, C core, XNNPACK,
reference), so all see the same machine noise; a repeat's figure is its mean ms per image. The C core's
outputs on every timed image are compared byte for byte with the reference kernels' outputs on the same image.
Exactness: 200 test images, every output byte compared (ours runs them as one batch, LiteRT one by one).
Goal (issue 13): the C core faster than the reference kernels and within 2x of XNNPACK.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from . import _bundles as B
from .convert_fidelity import BIG_RES

EXACT_N = 200  # test images compared byte for byte
C_VS_XNNPACK = 2.0  # goal: the C core at most this many times XNNPACK's time (and faster than the reference kernels)


def _litert(tflite: bytes, reference: bool):
    """LiteRT interpreter with its default settings (threads, delegate), as the Python API gives it."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=tflite, experimental_op_resolver_type=OpResolverType.BUILTIN_REF if reference
                     else OpResolverType.AUTO)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o).copy()
    return run


def _ms_per_image(run, x: np.ndarray) -> float:
    t0 = time.perf_counter()
    for k in range(len(x)):
        run(x[k:k + 1])
    return 1e3 * (time.perf_counter() - t0) / len(x)


def _lsb(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(images whose output differs anywhere, max |difference| in int8 steps)."""
    d = np.abs(a.astype(np.int32) - b.astype(np.int32)).reshape(len(a), -1)
    return int((d.max(1) > 0).sum()), int(d.max())


def _native(tflite: bytes):
    """(run, None) for the C core's inference program of `tflite`, or (None, why it cannot run here)."""
    from device.step.infer import InferenceProgram
    try:
        return InferenceProgram(tflite, engine="native").run, None
    except Exception as e:  # noqa: BLE001  (not built, or an op the program compiler lacks: reported as n/a)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def _recording(run, outs: list):
    def go(x: np.ndarray) -> np.ndarray:
        y = run(x)
        outs.append(y)
        return y
    return go


def _bench(name: str, d, repeats: int, k: int) -> tuple[str, str, dict]:
    from device.engine import Engine
    tfl = (d / "inference.tflite").read_bytes()
    ours, xnn, ref = Engine(d / "inference.tflite"), _litert(tfl, False), _litert(tfl, True)
    native, why = _native(tfl)
    x = B.quantized_inputs(d, max(k, EXACT_N))
    got_c: list[np.ndarray] = []
    got_ref: list[np.ndarray] = []
    runs = {"ours": ours.run, **({"c_core": _recording(native, got_c)} if native else {}), "xnnpack": xnn,
            "reference": _recording(ref, got_ref)}
    for run in runs.values():
        run(x[:1])  # warm-up: first-call allocation and delegate setup
    ms = {n: [] for n in runs}
    for _ in range(repeats):
        for n, run in runs.items():
            ms[n].append(_ms_per_image(run, x[:k]))
    med = {n: statistics.median(v) for n, v in ms.items()}
    c_timed = None
    if native:  # the same images in the same order on both sides: every output byte of every timed run
        a, b = np.concatenate(got_c), np.concatenate(got_ref)
        c_timed = {"images": len(a), "differ": _lsb(a, b)[0], "max_lsb": _lsb(a, b)[1]}
    cell = {n: f"{med[n]:.2f} ({min(v):.2f}..{max(v):.2f})" for n, v in ms.items()}
    na = f"n/a ({why})"
    c_ratio = (f"{med['c_core'] / med['xnnpack']:.2f}x | {med['c_core'] / med['reference']:.2f}x | "
               f"{med['ours'] / med['c_core']:.1f}x") if native else "n/a | n/a | n/a"
    timing = (f"| {name} | {x.shape[1]} | {cell['ours']} | {cell.get('c_core', na)} | {cell['xnnpack']} | {cell['reference']} | "
              f"{med['ours'] / med['xnnpack']:.1f}x | {med['ours'] / med['reference']:.2f}x | {c_ratio} | "
              + (f"{c_timed['differ']} of {c_timed['images']} |" if c_timed else "n/a |"))
    xe = x[:EXACT_N]
    got = ours.run(xe)
    got_exact = Engine(d / "inference.tflite", exact_float=True).run(xe)
    want_ref = np.concatenate([ref(xe[i:i + 1]) for i in range(len(xe))])
    want_xnn = np.concatenate([xnn(xe[i:i + 1]) for i in range(len(xe))])
    pairs = [(got, want_ref), (got_exact, want_ref), (got, want_xnn), (want_ref, want_xnn)]
    keys = ["ours_vs_reference", "exact_float_vs_reference", "ours_vs_xnnpack", "reference_vs_xnnpack"]
    if native:
        pairs.append((native(xe), want_ref))
        keys.append("c_core_vs_reference")
    lsb = [_lsb(a, b) for a, b in pairs]
    exact = (f"| {name} | {len(xe)} | " + " | ".join("{} (max {} LSB)".format(*x) for x in lsb)
             + (" |" if native else " | n/a |"))
    data = {"model": name, "px": int(x.shape[1]), "ms_median": med, "ms_all": ms, "images": len(xe),
            **{key: {"differ": a, "max_lsb": b} for key, (a, b) in zip(keys, lsb)},
            "c_core_vs_reference_timed": c_timed, **({"c_core_missing": why} if why else {})}
    return timing, exact, data


def run(quick: bool = False) -> str:
    repeats, k = (5, 20) if quick else (7, 20)
    models = [("mcunet-tiny (adapted)", B.bundle(B.REAL, eval_samples=None)[0])] if B.ADAPTED.exists() else \
             [("mcunet-tiny (random)", B.bundle("mcunet-tiny", 32)[0])]
    if not quick:
        models += [(f"{p} (random)", B.bundle(p, BIG_RES)[0]) for p in ("mbv2-w0.35", "proxylessnas-mobile")]
    timing, exact, data = [], [], []
    for name, d in models:
        t, e, js = _bench(name, d, repeats, k)
        timing.append(t)
        exact.append(e)
        data.append(js)
    B.write_json("engine_speed", {"repeats": repeats, "images_per_repeat": k, "exactness": data,
                                  "c_goal": {"max_vs_xnnpack": C_VS_XNNPACK}})
    note = "" if B.ADAPTED.exists() else \
        f"No adapted checkpoint (`{B.ADAPTED.relative_to(B.ROOT)}`; `make adapt`): mcunet-tiny has random weights (see convert_fidelity). "
    return (f"{note}Batch 1, int8 input from the Animal-MNIST test split, ms per image: median of {repeats} repeats "
            f"of {k} images (min..max); runtimes alternate within each repeat. LiteRT with its default threads; "
            "ours: the numpy engine (device.engine.Engine) in this process; C core: the same .tflite compiled to an "
            "inference program (device.step.InferenceProgram) run by the C core through ctypes, 1 thread. Ratios are "
            "of medians (>1: the first slower). Last column: the C core's outputs on every timed image (warm-up "
            "included) that differ from the reference kernels' on the same image.\n\n"
            "| model | px | ours (numpy) ms | C core ms | LiteRT XNNPACK ms | LiteRT reference ms | ours / XNNPACK | "
            "ours / reference | C / XNNPACK | C / reference | ours / C | C outputs differing from reference |\n"
            "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(timing) +
            f"\n\nBit-exactness on {EXACT_N} test images: images whose int8 output differs (max difference in LSB). "
            "`exact_float` makes our float islands (lite branches) reproduce the reference kernels' float32 "
            "rounding; by default they may round differently, which can move a requantized byte.\n\n"
            "| model | images | ours vs reference | ours (exact_float) vs reference | ours vs XNNPACK | reference vs XNNPACK | "
            "C core vs reference |\n|---|---:|---|---|---|---|---|\n" + "\n".join(exact) + "\n")
