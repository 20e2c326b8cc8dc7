"""`python -m firmware_sim export-tflm`: a bundle's int8 model for TensorFlow Lite Micro (TFLM).

    meta = export_tflm(Path("runs/bundle"), Path("runs/tflm"))     # or tflite=Path("adapted.tflite") (convert merge)
    meta["arena_bytes"], meta["ops"]  -> the arena TFLM needs (bytes), [{"name", "count", "resolver", "supported"}]

Writes model_data.h/.c (the .tflite as a 16-byte-aligned C array with its length, MODEL_ARENA_BYTES), tflm.json
and README.md. Both facts a TFLM user needs are measured with the tflite-micro package's interpreter, not guessed:
1. Build its interpreter with a generous arena and invoke it once. An op its resolver lacks fails here; the op is
   named from TFLM's log (its C++ code logs to stderr). Each try runs in a child process: with some arenas a
   little too small TFLM crashes (SIGSEGV) instead of refusing them.
2. Read the arena the RecordingMicroAllocator holds after the invoke. It is a lower bound only: kernels take
   temporary memory while they prepare, which is released before that count is read.
3. The arena is the smallest multiple of 16 bytes with which the interpreter builds and invokes: try the count
   from step 2, double until it runs, then bisect.
Everything is written into a temporary folder beside OUT and renamed into place: nothing half-written in OUT.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from device import TFLiteFormatError, read_tflite

ROOT = Path(__file__).resolve().parents[1]   # the repo: the child process imports firmware_sim from here
EXAMPLE = "python -m firmware_sim export-tflm --bundle runs/bundle-new-tinytl-lb --out runs/tflm"
GENEROUS = 64 << 20  # bytes: the first arena tried; a model that needs more fits no microcontroller
ALIGN = 16           # bytes: TFLM's arena alignment (MicroArenaBufferAlignment); the model is aligned the same
PER_LINE = 12        # model bytes per line of model_data.c
# MicroMutableOpResolver methods whose name is not "Add" + the op name in CamelCase
_RESOLVER = {"PADV2": "AddPadV2", "CUMSUM": "AddCumSum", "BATCH_MATMUL": "AddBatchMatMul",
             "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM"}


class TFLMError(ValueError):
    """The model cannot be exported for TFLM; the message names the file and the fix."""


def tflm_version() -> str:
    try:
        import tflite_micro
    except ImportError:
        raise TFLMError("export-tflm needs the tflite-micro package (TFLM's interpreter); run `make setup`") from None
    return tflite_micro.__version__


def resolver_method(op: str) -> str:
    """CONV_2D -> AddConv2D, SPACE_TO_BATCH_ND -> AddSpaceToBatchNd (tflite::MicroMutableOpResolver)."""
    parts = (p if p[0].isdigit() else p.capitalize() for p in op.split("_"))
    return _RESOLVER.get(op, "Add" + "".join(parts))


def probe(path: str, arena: int, allocations: bool = False) -> int:
    """Child side: build TFLM's interpreter for the model at `path` with `arena` bytes and invoke it once on zeros.
    0 if it ran; 1 if TFLM refused (its C++ code says why on stderr). allocations: then print the
    RecordingMicroAllocator's counts to stderr."""
    from tflite_micro import runtime
    m = read_tflite(path)
    try:
        it = runtime.Interpreter.from_file(path, arena_size=arena)
        for i, t in enumerate(m.inputs):
            it.set_input(np.zeros(m.tensors[t].shape, m.tensors[t].dtype), i)
        it.invoke()
    except RuntimeError:
        return 1
    if allocations:
        it.print_allocations()
    return 0


def run_tflm(path: Path, arena: int, allocations: bool = False) -> tuple[bool, str]:
    """probe() in a child process, because TFLM can crash (SIGSEGV) on an arena a little too small instead of
    refusing it: (whether it ran, TFLM's log)."""
    code = "import sys; from firmware_sim.tflm import probe; sys.exit(probe(sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1'))"
    r = subprocess.run([sys.executable, "-c", code, str(Path(path).resolve()), str(arena), str(int(allocations))],
                       cwd=ROOT, capture_output=True, text=True, errors="replace")
    return r.returncode == 0, r.stderr


def measure_arena(path: Path) -> dict:
    """{"arena_bytes": the smallest multiple of 16 bytes that runs, "recorded_bytes": the allocator's count}.
    TFLMError naming the op when TFLM's resolver lacks one, or TFLM's own message for any other refusal."""
    ok, log = run_tflm(path, GENEROUS, allocations=True)
    if not ok:
        missing = re.findall(r"Didn't find op for (?:builtin|custom) opcode '([^']+)'", log)
        if missing:
            raise TFLMError(f"{path}: op {missing[0]} is not in TFLM's op resolver (tflite-micro {tflm_version()}), so "
                            f"TFLM cannot run this model; use a model that converts without {missing[0]}, or add a "
                            f"TFLM kernel for it")
        lines = [s for s in log.splitlines() if s.strip()]
        raise TFLMError(f"{path}: TFLM's interpreter refused the model: {lines[0] if lines else 'it crashed'}; "
                        "re-convert it with `python -m convert` (a fully int8 model of builtin ops)")
    recorded = int(re.search(r"Arena allocation total (\d+) bytes", log).group(1))
    lo, hi = -(-recorded // ALIGN) - 1, -(-recorded // ALIGN)   # units of 16 bytes; the count itself is needed
    while not run_tflm(path, hi * ALIGN)[0]:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if run_tflm(path, mid * ALIGN)[0] else (mid, hi)
    return {"arena_bytes": hi * ALIGN, "recorded_bytes": recorded}


def _tensor(m, i: int) -> dict:
    t = m.tensors[i]
    q = {"scale": float(t.quant.scale[0]), "zero_point": int(t.quant.zero_point[0])} if t.quant is not None else {}
    return {"name": t.name, "shape": list(t.shape), "type": t.type, **q}


def _header(meta: dict) -> str:
    ops = "".join(f"\n//   resolver.{o['resolver']}();  // {o['name']} x{o['count']}" for o in meta["ops"])
    return f"""// Generated by `python -m firmware_sim export-tflm` from {meta['source']}; do not edit.
// TFLM ops, registered in a tflite::MicroMutableOpResolver<MODEL_OP_COUNT> resolver:{ops}
#ifndef MODEL_DATA_H_
#define MODEL_DATA_H_

// bytes: the smallest tensor arena tflite-micro {meta['tflite_micro']} ran this model with (reference kernels,
// 64-bit host); declare it 16-byte aligned
#define MODEL_ARENA_BYTES {meta['arena_bytes']}
#define MODEL_OP_COUNT {len(meta['ops'])}

#ifdef __cplusplus
extern "C" {{
#endif
extern const unsigned char g_model_data[];  // the .tflite flatbuffer, 16-byte aligned
extern const unsigned int g_model_data_len;  // bytes
#ifdef __cplusplus
}}
#endif

#endif  // MODEL_DATA_H_
"""


def _source(model: bytes, meta: dict) -> str:
    rows = (", ".join(f"0x{b:02x}" for b in model[i:i + PER_LINE]) for i in range(0, len(model), PER_LINE))
    body = ",\n  ".join(rows)
    return f"""// Generated by `python -m firmware_sim export-tflm` from {meta['source']}; do not edit.
// sha256 {meta['sha256']}
#include "model_data.h"

#if defined(__cplusplus)
#define MODEL_DATA_ALIGN alignas(16)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define MODEL_DATA_ALIGN _Alignas(16)
#else
#define MODEL_DATA_ALIGN __attribute__((aligned(16)))  // C99: GCC, Clang, armclang
#endif

MODEL_DATA_ALIGN const unsigned char g_model_data[] = {{
  {body}
}};
const unsigned int g_model_data_len = {len(model)};
"""


def _readme(meta: dict) -> str:
    adds = "\n".join(f"  resolver.{o['resolver']}();  // {o['name']} x{o['count']}" for o in meta["ops"])
    io = "\n".join(f"- {k} {t['name']}: {t['type']} {tuple(t['shape'])}, scale {t.get('scale')}, zero point "
                   f"{t.get('zero_point')}" for k in ("input", "output") for t in meta[k + "s"])
    if meta["labels"]:
        io += "\n- output index -> class: " + ", ".join(f"{i} {n}" for i, n in enumerate(meta["labels"]))
    return f"""# {meta['source']} for TensorFlow Lite Micro

Written by `python -m firmware_sim export-tflm` with tflite-micro {meta['tflite_micro']}.

- `model_data.c`, `model_data.h`: the model ({meta['model_bytes']:,} bytes, sha256 `{meta['sha256'][:16]}...`) as
  `g_model_data` (16-byte aligned) and `g_model_data_len`. Compile `model_data.c` with your application.
- `MODEL_ARENA_BYTES` = {meta['arena_bytes']:,}: the smallest tensor arena with which tflite-micro's interpreter built
  and ran this model on the host (reference kernels, 64-bit pointers); with some arenas a little smaller it crashed
  instead of reporting an error. On a 32-bit MCU TFLM's bookkeeping is smaller, but optimized kernels (CMSIS-NN)
  may ask for scratch buffers the reference kernels do not: check `interpreter.arena_used_bytes()` after
  `AllocateTensors()` on the target.
- `tflm.json`: the same facts for tools (ops, sizes, sha256, input and output quantization).

{io}

```c++
#include "model_data.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

alignas(16) static uint8_t tensor_arena[MODEL_ARENA_BYTES];
static tflite::MicroMutableOpResolver<MODEL_OP_COUNT> resolver;

void run_model() {{
{adds}
  static tflite::MicroInterpreter interpreter(tflite::GetModel(g_model_data), resolver, tensor_arena,
                                              MODEL_ARENA_BYTES);
  interpreter.AllocateTensors();
  // fill interpreter.input(0)->data.int8 (q = round(x / scale) + zero_point), then
  interpreter.Invoke();
  // read interpreter.output(0)->data.int8
}}
```
"""


def export_tflm(bundle_dir: Path, out: Path, tflite: Path | None = None, log=print) -> dict:
    """Write `out`/model_data.h, model_data.c, tflm.json, README.md for the bundle's inference.tflite (or `tflite`,
    e.g. a model from `python -m convert merge`). Returns tflm.json's contents. TFLMError if TFLM cannot run it."""
    from device import load_bundle
    bundle = load_bundle(bundle_dir)
    return export_model(Path(tflite) if tflite else bundle.tflite_path, out, labels=bundle.labels, log=log)


def export_model(path: Path, out: Path, labels: list[str] | None = None, log=print) -> dict:
    """export_tflm for a .tflite file alone; labels: the class of each output index, if known."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TFLMError(f"{out}: exists and is not an empty folder; choose another --out or remove it (nothing was written)")
    if not Path(path).is_file():
        raise TFLMError(f"{path}: no such model file; pass a .tflite from `python -m convert` or `python -m convert merge`")
    model = Path(path).read_bytes()
    try:
        m = read_tflite(model)
    except TFLiteFormatError as e:
        raise TFLMError(f"{path}: {e}; pass a .tflite from `python -m convert` or `python -m convert merge`") from None
    counts = Counter(op.name for op in m.ops)
    log(f"{path}: {len(model):,} bytes, {len(m.ops)} ops; measuring the arena with tflite-micro {tflm_version()}")
    arena = measure_arena(path)
    meta = {"source": str(path), "tflite_micro": tflm_version(), "model_bytes": len(model),
            "sha256": hashlib.sha256(model).hexdigest(), **arena,
            # every op is supported once the interpreter ran: an op its resolver lacks stops measure_arena
            "ops": [{"name": n, "count": c, "resolver": resolver_method(n), "supported": True} for n, c in counts.items()],
            "inputs": [_tensor(m, i) for i in m.inputs], "outputs": [_tensor(m, i) for i in m.outputs],
            "labels": labels}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "model_data.h").write_text(_header(meta))
        (tmp / "model_data.c").write_text(_source(model, meta))
        (tmp / "tflm.json").write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / "README.md").write_text(_readme(meta))
        if out.exists():
            out.rmdir()   # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def add_parser(sub) -> None:
    """Add `export-tflm` to an argparse subparsers object; it runs cmd_export_tflm."""
    import argparse
    help = "Export a bundle's int8 model for TensorFlow Lite Micro: C array, measured arena size, op check."
    s = sub.add_parser("export-tflm", help=help, description=help, epilog="example:\n  " + EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--bundle", required=True, type=Path, help="a bundle folder made by `python -m convert`")
    s.add_argument("--tflite", type=Path, help="export this model instead of the bundle's inference.tflite "
                                               "(e.g. from `python -m convert merge`)")
    s.add_argument("--out", required=True, type=Path, help="a new or empty folder: model_data.h/.c, tflm.json, README.md")


def cmd_export_tflm(a) -> None:
    meta = export_tflm(a.bundle, a.out, a.tflite, log=lambda s: print(s, flush=True))
    print(f"{len(meta['ops'])} ops ({', '.join(o['name'] for o in meta['ops'])}), model {meta['model_bytes']:,} bytes, "
          f"arena {meta['arena_bytes']:,} bytes -> {a.out}")
