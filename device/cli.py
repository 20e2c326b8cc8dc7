"""`python -m device ...`: inspect, plan, infer, eval, train, export. One parser per subcommand, each with an example."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .step.runner import ENGINES

B = "bundles/animal"
EXAMPLES = {
    "inspect": f"python -m device inspect --bundle {B}",
    "plan": f"python -m device plan --bundle {B} --optimizer adam --budget-kb 512",
    "infer": f"python -m device infer --bundle {B} --images test.npz --engine native --trained trained.npz\n"
             f"  python -m device infer --tflite model.tflite --input x.npy --output y.npy --engine litert-ref",
    "eval": f"python -m device eval --bundle {B} --data test.npz --trained trained.npz",
    "train": f"python -m device train --bundle {B} --data train.npz --eval-data test.npz --steps 7000 --lr 1e-3 \\\n"
             f"      --optimizer adam --checkpoint-dir ckpt --checkpoint-every 200 --export trained.npz\n"
             f"  find imgs -name '*.pgm' | awk -F/ '{{print $2, $0}}' | python -m device train --bundle {B} --stdin --steps 100",
    "export": f"python -m device export --bundle {B} --checkpoint-dir ckpt --out trained.npz",
    "build-native": "python -m device build-native                                # this machine's library\n"
                    "  python -m device build-native --target aarch64-linux-gnu      # Raspberry Pi OS 64-bit / Jetson Linux",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m device", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Run a bundle on the device: int8 inference, batch-1 TinyTL learning inside a planned arena.",
                                epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()))
    sub = p.add_subparsers(dest="cmd", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog="example:\n  " + EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def optim(s: argparse.ArgumentParser) -> None:
        s.add_argument("--optimizer", choices=("sgd", "adam"), default="adam")
        s.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
        s.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
        s.add_argument("--momentum", type=float, default=0.9, help="sgd momentum")

    def engine(s: argparse.ArgumentParser, litert: bool = True) -> None:
        s.add_argument("--engine", choices=ENGINES + (("litert", "litert-ref") if litert else ()),
                       help="native: the compiled step program on the C core (default when built); numpy: the same "
                            "program on the numpy reference" + ("; litert / litert-ref: LiteRT with XNNPACK / its "
                                                                 "reference kernels (the bundle's .tflite as shipped)" if litert else ""))

    s = cmd("inspect", "Bundle summary: model, input, labels, trainable graph, memory plan of the update step.")
    s.add_argument("--bundle", required=True, type=Path)
    optim(s)
    s = cmd("plan", "Memory plan of one update step: per-layer table, arena picture, peak (checked against --budget-kb).")
    s.add_argument("--bundle", required=True, type=Path)
    s.add_argument("--planner", choices=("greedy", "naive"), default="greedy")
    s.add_argument("--budget-kb", type=float, help="refuse a plan whose arena exceeds this many KB (1 KB = 1024 bytes)")
    s.add_argument("--arena", action="store_true", help="also draw every buffer of the arena")
    optim(s)
    s = cmd("infer", "Class predictions for images (files, a folder or .npz), or raw outputs of any full-int8 .tflite.")
    s.add_argument("--bundle", type=Path)
    s.add_argument("--images", nargs="+", help=".npz (x[, y]), an image folder, or .npy/.pgm/.ppm files")
    s.add_argument("--trained", type=Path, help="trained parameters (.npz from 'device export')")
    engine(s)
    s.add_argument("--tflite", type=Path, help="any full-int8 .tflite (with --input/--output)")
    s.add_argument("--input", type=Path, help=".npy of model inputs, (N, ...) in the model's input dtype")
    s.add_argument("--output", type=Path, help=".npy to write the outputs to")
    s = cmd("eval", "Top-1 accuracy of the bundle (optionally with trained parameters) on labelled data.")
    s.add_argument("--bundle", required=True, type=Path)
    s.add_argument("--data", required=True, help=".npz (x, y) or an image folder")
    s.add_argument("--trained", type=Path)
    s.add_argument("--tflite", type=Path, help="evaluate this int8 .tflite instead of the bundle's (e.g. one 'convert merge' wrote "
                                               "from this bundle); the bundle still gives labels and input quantization")
    engine(s)
    s.add_argument("--limit", type=int, help="evaluate at most this many samples")
    s = cmd("train", "Batch-1 on-device learning of the trainable parameters (crash-safe, resumable).")
    s.add_argument("--bundle", required=True, type=Path)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help=".npz (x uint8 NHWC, y) or an image folder")
    src.add_argument("--stdin", action="store_true", help="read '<label> <image path>' lines from stdin")
    s.add_argument("--steps", type=int, default=1000, help="total updates, batch 1 (default 1000)")
    optim(s)
    s.add_argument("--seed", type=int, default=0, help="fixes the data order")
    s.add_argument("--checkpoint-dir", type=Path, help="checkpoints go here; training resumes from the newest")
    s.add_argument("--checkpoint-every", type=int, default=100)
    s.add_argument("--max-bad", type=int, default=3, help="consecutive non-finite steps before rolling back")
    s.add_argument("--eval-data", help="labelled data for periodic and final evaluation")
    s.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: only at the end)")
    s.add_argument("--eval-limit", type=int, help="evaluate on at most this many samples")
    s.add_argument("--log-every", type=int, default=100)
    s.add_argument("--export", type=Path, help="write the trained parameters here at the end")
    s.add_argument("--budget-kb", type=float, help="refuse to start if the step's arena exceeds this")
    engine(s, litert=False)
    s = cmd("export", "Write the trained parameters of the newest checkpoint as the .npz 'convert merge' takes.")
    s.add_argument("--bundle", required=True, type=Path)
    s.add_argument("--checkpoint-dir", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s = cmd("build-native", "Build the C core (the step program's executor) with the pinned ziglang package.")
    s.add_argument("--target", default=None, help="x86_64-linux-gnu or aarch64-linux-gnu (default: this machine)")
    s.add_argument("--out", type=Path, help="library path (default device/native/lib/<target>/libtinytl_core.so)")
    return p


def _optim(a, steps: int = 1000):
    from .optim import OptimConfig
    return OptimConfig(getattr(a, "optimizer", "sgd"), lr=getattr(a, "lr", 1e-3), momentum=getattr(a, "momentum", 0.9),
                       schedule=getattr(a, "schedule", "cosine"), total_steps=max(1, steps))


def _trainer(a, budgets=None, planner=None, steps: int = 1000):
    """The plan (inspect, plan) or the runtime (eval, infer) of the bundle; --engine picks who runs the program."""
    from .bundle import load_bundle
    from .planner import plan_greedy
    from .step.runner import make_trainer
    from .trainer import Trainer
    b = load_bundle(a.bundle)
    if hasattr(a, "engine") and a.engine in ENGINES + (None,):
        return make_trainer(b, _optim(a, steps), planner=planner or plan_greedy, budgets=budgets, engine=a.engine)
    return Trainer(b, _optim(a, steps), planner=planner or plan_greedy, budgets=budgets)


def _plan_summary(tr) -> str:
    from .planner import peak_step
    kinds: dict[str, int] = {}
    for b in tr.plan.buffers:
        kinds[b.kind] = kinds.get(b.kind, 0) + b.size
    step, live = peak_step(tr.plan, "sram")
    return (f"update step: {len(tr.plan.buffers)} buffers, arena {tr.plan.peak['sram']:,} bytes "
            f"({tr.plan.peak['sram'] / 1024:.1f} KB), most live at step {step} of {tr.U + 1}; sum by kind: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())))


def cmd_inspect(a) -> None:
    tr = _trainer(a)
    b, m = tr.bundle, tr.bundle.manifest
    print(f"bundle {b.path}: {m['model']}, format v{m['version']}, method {m.get('method')}, labels {', '.join(b.labels)}")
    i = m["input"]
    print(f"input {i['shape']} {i['dtype']} scale {i['scale']:.6g} zero point {i['zero_point']}; output {m['output']['shape']}")
    print(f"inference.tflite: {len(tr.engine.ops)} ops; trainable graph: {len(tr.graph.ops)} ops, backward through {len(tr.bwd)}")
    n = sum(v.size for v in b.trainable.values())
    print(f"trainable: {len(tr.names)} tensors, {n:,} parameters ({4 * n:,} bytes float32)")
    for p in b.spec["params"]:
        print(f"  {p['name']:<32} {str(p['shape']):<16} -> .tflite op {p['slot']['op']} {p['slot']['op_name']} input {p['slot']['input']} ({p['slot']['dtype']})")
    if b.frozen:
        print(f"frozen GroupNorm parameters shipped for the backward: {len(b.frozen)} tensors, "
              f"{sum(v.size for v in b.frozen.values()):,} float32 values (trainable.npz 'frozen/...')")
    print(_plan_summary(tr))


def cmd_plan(a) -> None:
    from .memplan import per_layer
    from .planner import check_budget, format_plan, plan_greedy, plan_naive
    tr = _trainer(a, planner=plan_naive if a.planner == "naive" else plan_greedy)
    kinds = ("activation", "saved", "mask", "grad", "optimizer", "param", "scratch")
    print(f"{'layer':<28}" + "".join(f"{k:>11}" for k in kinds) + f"{'total':>11}   (bytes)")
    for layer, r in per_layer(tr.plan):
        print(f"{layer:<28}" + "".join(f"{r.get(k, 0):>11,}" for k in kinds) + f"{sum(r.values()):>11,}")
    if a.arena:
        print(format_plan(tr.plan))
    print(_plan_summary(tr))
    print(f"peak ({a.planner} planner): {tr.plan.peak['sram']:,} bytes = {tr.plan.peak['sram'] / 1024:.1f} KB")
    if a.budget_kb:
        check_budget(tr.plan, {"sram": int(a.budget_kb * 1024)})
        print(f"fits the budget of {a.budget_kb:g} KB")


def _interpreter(path: Path, engine: str):
    """LiteRT (ai_edge_litert, else tflite_runtime on an old board); litert-ref = reference kernels."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter, OpResolverType  # type: ignore
        except ImportError:
            raise SystemExit("error: --engine litert needs ai_edge_litert or tflite_runtime; use --engine native") from None
    kind = OpResolverType.BUILTIN_REF if engine == "litert-ref" else OpResolverType.AUTO
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=kind)
    it.allocate_tensors()
    return it


def _run_litert(it, x: np.ndarray) -> np.ndarray:
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for k in range(len(x)):
        it.set_tensor(i["index"], x[k:k + 1])
        it.invoke()
        out.append(it.get_tensor(o["index"]).copy())
    return np.concatenate(out)


def _logits(a, xq: np.ndarray) -> np.ndarray:
    from .bundle import load_trained
    if getattr(a, "tflite", None) is not None:
        if a.trained:
            raise SystemExit("error: --tflite and --trained exclude each other: a merged .tflite already holds the trained parameters")
        return _tflite_logits(a.tflite, a.engine, xq)
    if a.engine in ENGINES + (None,):
        tr = _trainer(a)
        a.used_engine = getattr(tr, "engine_name", "numpy Trainer")
        if a.trained:
            tr.load_state(tr.state() | {f"param/{k}": v for k, v in load_trained(tr.bundle, a.trained).items()})
        return tr.predict(xq)
    if a.trained:
        raise SystemExit("error: LiteRT runs the bundle's .tflite as shipped; merge trained parameters on the host "
                         "first ('python -m convert merge') and pass the result with --tflite, or use --engine native")
    return _run_litert(_interpreter(a.bundle / "inference.tflite", a.engine), xq).astype(np.float32)


def _tflite_logits(path: Path, engine: str, xq: np.ndarray) -> np.ndarray:
    """Dequantized outputs of an int8 .tflite (a merged one of the bundle: same input and output spec)."""
    from .tflite_reader import read_tflite
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such .tflite")
    model = read_tflite(path)
    _same_input(path, model.tensors[model.inputs[0]].shape, xq)  # before any kernel or interpreter: another model
    if engine in ENGINES + (None,):                              # may hold ops we lack
        y = _own_inference(path, engine, xq)
        q = model.tensors[model.outputs[0]].quant
        return (y.astype(np.float32) - q.zero_point[0]) * np.float32(q.scale[0]) if q is not None else y.astype(np.float32)
    it = _interpreter(path, engine)
    scale, zero = it.get_output_details()[0]["quantization"]
    y = _run_litert(it, xq).astype(np.float32)
    return (y - zero) * scale if scale else y


def _own_inference(path: Path, engine: str, x: np.ndarray) -> np.ndarray:
    """Any int8 .tflite compiled into an inference program, run by the C core or numpy (batch 1)."""
    from .step.infer import InferenceProgram
    from .step.runner import default_engine
    return InferenceProgram(path, engine=engine or default_engine()).run(x)


def _same_input(path: Path, shape, xq: np.ndarray) -> None:
    if tuple(int(d) for d in shape[1:]) != tuple(xq.shape[1:]):
        raise SystemExit(f"error: {path}: input {[int(d) for d in shape[1:]]}, but this bundle's inputs are {list(xq.shape[1:])}: "
                         "pass a .tflite that 'convert merge' wrote from this bundle")


def _images(paths: list[str], labels) -> tuple[np.ndarray, np.ndarray | None]:
    from .data import DataError, load_labelled, load_npz, read_image
    if len(paths) == 1 and (Path(paths[0]).is_dir() or paths[0].endswith(".npz")):
        if paths[0].endswith(".npz"):
            with np.load(paths[0], allow_pickle=False) as z:
                if "y" not in z.files:
                    x = z["x"]
                    return (x[..., None] if x.ndim == 3 else x), None
            return load_npz(paths[0])
        return load_labelled(paths[0], labels)
    imgs = [read_image(p) for p in paths]
    if len({i.shape for i in imgs}) != 1:
        raise DataError(f"images of different sizes: {sorted({i.shape for i in imgs})[:3]}")
    return np.stack(imgs), None


def cmd_infer(a) -> None:
    if a.tflite:
        if not (a.input and a.output):
            raise SystemExit("error: --tflite needs --input X.npy and --output Y.npy")
        x = np.load(a.input, allow_pickle=False)
        if a.engine in ENGINES + (None,):
            y = _own_inference(a.tflite, a.engine, x)
        else:
            y = _run_litert(_interpreter(a.tflite, a.engine), x)
        np.save(a.output, y)
        print(f"{a.tflite.name}: {len(x)} input(s) -> {a.output} {y.dtype}{list(y.shape)} ({a.engine})")
        return
    if not (a.bundle and a.images):
        raise SystemExit("error: infer needs --bundle and --images (or --tflite/--input/--output)")
    from .bundle import load_bundle
    from .data import to_model_input
    b = load_bundle(a.bundle)
    x, _ = _images(a.images, b.labels)
    pred = _logits(a, to_model_input(x, b.manifest, "images")).argmax(1)
    for k, p in enumerate(pred):
        print(f"{k}\t{b.labels[p]}")


def cmd_eval(a) -> None:
    from .bundle import load_bundle
    from .data import check_labels, load_labelled, to_model_input
    b = load_bundle(a.bundle)
    x, y = load_labelled(a.data, b.labels)
    x, y = x[:a.limit], y[:a.limit]
    check_labels(y, len(b.labels), a.data)
    acc = float((_logits(a, to_model_input(x, b.manifest, a.data)).argmax(1) == y).mean())
    print(f"accuracy {acc:.4f} on {len(y)} samples ({getattr(a, 'used_engine', a.engine)} engine{', trained parameters' if a.trained else ''})")


def cmd_train(a) -> None:
    from .bundle import load_bundle
    from .data import load_labelled, stream
    from .loop import LoopConfig, export, train
    from .step.runner import make_trainer
    b = load_bundle(a.bundle)
    budgets = {"sram": int(a.budget_kb * 1024)} if a.budget_kb else None
    # the plan is computed and checked before the first step
    tr = make_trainer(b, _optim(a, a.steps), budgets=budgets, engine=a.engine)
    print(_plan_summary(tr) + f"; engine {getattr(tr, 'engine_name', 'numpy (Trainer)')}")
    data = load_labelled(a.data, b.labels) if a.data else None
    ev = None
    if a.eval_data:
        ex, ey = load_labelled(a.eval_data, b.labels)
        ev = (ex[:a.eval_limit], ey[:a.eval_limit])
    cfg = LoopConfig(steps=a.steps, seed=a.seed, checkpoint_dir=str(a.checkpoint_dir) if a.checkpoint_dir else None,
                     checkpoint_every=a.checkpoint_every, max_bad=a.max_bad, log_every=a.log_every, eval_every=a.eval_every)
    r = train(b, tr.cfg, cfg, data=data, samples=stream() if a.stdin else None, eval_data=ev,
              log=lambda s: print(s, flush=True), trainer=tr)
    msg = (f"trained {r['trained_steps']} steps (now at {r['steps']}), {r['ms_per_step']:.1f} ms/step, loss {r['final_loss']:.4f}, "
           f"{r['skipped']} skipped, {r['rollbacks']} rollbacks")
    if "eval_acc" in r:
        msg += f", eval accuracy {r['eval_acc']:.4f}"
    print(msg)
    if a.export:
        export(tr.params, a.export)
        print(f"exported trained parameters -> {a.export}")


def cmd_export(a) -> None:
    from . import checkpoint as ck
    from .bundle import load_bundle
    from .loop import export
    b = load_bundle(a.bundle)
    found = ck.latest(a.checkpoint_dir, expect_hash=ck.bundle_hash(b))
    if found is None:
        raise SystemExit(f"error: {a.checkpoint_dir}: no checkpoint")
    path, state, meta = found
    learned = [n for n in b.trainable if f"param/{n}" in state]
    if not learned:
        raise SystemExit(f"error: {path}: holds none of this bundle's trainable parameters")
    # a run that trained a subset (e.g. the simulator's --trainables tinytl-b on a TinyTL-L+B bundle) left the
    # rest as shipped: export them unchanged, so the file is complete for `convert merge`
    params = {n: state[f"param/{n}"] if n in learned else b.trainable[n] for n in b.trainable}
    export(params, a.out)
    kept = len(params) - len(learned)
    print(f"{path.name} (step {meta['step']}) -> {a.out}: {len(learned)} learned tensors"
          + (f" + {kept} unchanged from the bundle (frozen in that run)" if kept else "") + f", {a.out.stat().st_size:,} bytes")


def cmd_build_native(a) -> None:
    from .native import host_target
    from .native.build import build
    build(a.target or host_target(), out=a.out, quiet=False)


def main(argv: list[str] | None = None) -> int:
    from .bundle import BundleError
    from .checkpoint import CheckpointError
    from .data import DataError
    from .kernels import UnsupportedOpError
    from .planner import BudgetError
    from .tflite_reader import TFLiteFormatError
    from .native import NativeError
    from .native.build import BuildError
    from .step.program import ProgramError
    from .trainer import TrainError
    a = _parser().parse_args(argv)
    try:
        {"inspect": cmd_inspect, "plan": cmd_plan, "infer": cmd_infer, "eval": cmd_eval, "train": cmd_train,
         "export": cmd_export, "build-native": cmd_build_native}[a.cmd](a)
        return 0
    except (BundleError, CheckpointError, DataError, UnsupportedOpError, TFLiteFormatError, TrainError, BudgetError,
            ProgramError, NativeError, BuildError) as e:
        first = str(e).splitlines()
        print(f"error: {first[0]}" + ("".join(f"\n  {l}" for l in first[1:]) if isinstance(e, BudgetError) else ""), file=sys.stderr)
        return 2
    except SystemExit as e:  # `raise SystemExit("error: ...")` in the commands: the same exit code as every other bad input
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130
