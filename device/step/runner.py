"""A Trainer whose step is the compiled program, run by the C core (engine "native") or numpy ("numpy").

    tr = ProgramTrainer(bundle, OptimConfig("adam", lr=1e-3), engine="native")
    loss, applied = tr.step(x_int8, label)    # the same interface as device.trainer.Trainer
    logits = tr.predict(x_int8_batch)

Everything a step touches is the arena (one uint8 array, exactly the plan's peak bytes handed to the executor)
and the model buffer (the .tflite bytes, read-only); the host writes the input sample into its arena buffer
and passes label and learning rate in a small IO record (the firmware's mailbox). No float copy of a frozen
weight exists: kernels read int8 weights where they sit and dequantize them as they go.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from ..optim import OptimConfig, lr_at
from ..planner import plan_greedy
from ..tflite_reader import read_tflite
from ..trainer import Trainer
from .compile import compile_step
from .program import IO, Memory, Program, ProgramError, native_core_for, run_numpy

ENGINES = ("native", "numpy")
_said: set[str] = set()


class _ModelView:
    """What the planner needs of a .tflite (tensors, ops) without preparing any numpy kernel."""

    def __init__(self, path):
        self.model = read_tflite(path)
        self.tensors = self.model.tensors

    @property
    def ops(self):
        return self.model.ops


def default_engine() -> str:
    """'native' when the host's C core is built, else 'numpy' (said once per process)."""
    from ..native import library_path, load
    if load() is not None:
        return "native"
    if "native" not in _said:
        _said.add("native")
        print(f"note: the C core is not built ({library_path()}); running the numpy reference "
              "(build it: python -m device build-native)", file=sys.stderr)
    return "numpy"


class ProgramTrainer(Trainer):
    def __init__(self, bundle, optim: OptimConfig, *, planner=plan_greedy, budgets: dict | None = None,
                 region: str = "sram", engine: str | None = None, arena_capacity=None):
        super().__init__(bundle, optim, planner=planner, budgets=budgets, region=region, arena_capacity=arena_capacity)
        self.engine_name = engine or default_engine()
        if self.engine_name not in ENGINES:
            raise ValueError(f"engine '{self.engine_name}': choose one of {', '.join(ENGINES)}")
        self.program: Program = compile_step(self, optim)
        self.model = np.frombuffer(self.program.model, np.uint8)
        shipped = bundle.manifest.get("files", {}).get("inference.tflite", {}).get("sha256")
        if shipped and self.program.model_sha256 != shipped:
            raise ProgramError(f"{bundle.tflite_path}: its bytes do not match the program's model hash "
                               "(the bundle changed after compiling: recompile)")
        self.notes = [i.note for i in self.program.instrs]
        self.core = None
        if self.engine_name == "native":
            self.core, self.words = native_core_for(self.program)
        # the fault seam inside the program (Trainer.on_phase sees only 'step'): (instruction, callback), the
        # run stops before that instruction and calls back, once; firmware_sim's power cuts set it
        self.cut_at: tuple[int, object] | None = None
        self.heap_bytes: int | None = None   # Python heap peak during one step, measured once by measure_heap()
        self._measure = False

    @property
    def x_view(self) -> np.ndarray:
        """The model input's arena buffer (the arena may be replaced, e.g. by the simulator's exact-budget one)."""
        return self.arena[f"act:{self.engine.model.inputs[0]}"]

    def _make_engine(self):
        return _ModelView(self.bundle.tflite_path)

    # the arena handed to an executor: exactly the plan's bytes of the step's region
    def arena_bytes(self) -> np.ndarray:
        a, r = self.arena, self.region
        base = a.base[r]
        peak = self.plan.peak[r]
        if a.memory[r].size - base < peak:
            raise ProgramError(f"the arena holds {a.memory[r].size - base:,} bytes, the plan needs {peak:,}")
        return a.memory[r][base:base + peak]

    def _run(self, section: str, io: IO, profile: dict | None = None) -> None:
        first, last = self.program.section(section)
        cut = None
        if self.cut_at is not None and first <= self.cut_at[0] < last:
            (last, cut), self.cut_at = self.cut_at, None
        arena = self.arena_bytes()
        if self.core is not None:
            self.core.run(self.words, arena, self.model, io, first, last, self.notes)
        else:
            run_numpy(self.program, Memory(arena, self.model, io), first, last, profile)
        if cut is not None:
            cut()

    def patch(self) -> None:  # the program encodes trainable biases itself, every forward
        pass

    def measure_heap(self) -> None:
        """Measure the heap the next step allocates (tracemalloc: the Python side; the C core has no allocator)."""
        self._measure = True

    def step(self, x: np.ndarray, label: int, *, step_index: int | None = None) -> tuple[float, bool]:
        if self._measure:
            import tracemalloc
            self._measure = False
            if not tracemalloc.is_tracing():
                tracemalloc.start()
                try:
                    return self.step(x, label, step_index=step_index)
                finally:
                    self.heap_bytes = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
        io = self.next_io(label, self.updates, step_index)
        self.x_view[...] = np.asarray(x).reshape(self.x_view.shape)
        self._now = self.updates if step_index is None else step_index
        try:
            self._phase("step", 0, 1)
            self._run("step", io)
        finally:
            self._now = None
        if io.applied:
            self.updates += 1
        return io.loss, bool(io.applied)

    def next_io(self, label: int, updates: int, step_index: int | None = None) -> IO:
        """What the host hands the program for a step after `updates` applied ones: the label and the schedule
        (the learning rate of step `step_index`, default `updates`; Adam's bias corrections)."""
        lr = lr_at(self.cfg, updates if step_index is None else step_index)
        io = IO(label=int(label), first=int(updates == 0))
        if self.cfg.name == "adam":
            k = updates + 1
            b1, b2 = self.cfg.betas
            io.lr, io.sqrt_c2 = float(np.float32(lr / (1 - b1 ** k))), float(np.float32(math.sqrt(1 - b2 ** k)))
        else:
            io.lr = float(np.float32(lr))
        return io

    def predict(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """Float logits (N, classes): the forward and float head of the program, one sample at a time."""
        logits = self.arena["logits"]
        out = np.zeros((len(x), logits.shape[-1]), np.float32)
        io = IO()
        for k in range(len(x)):
            self.x_view[...] = x[k:k + 1].reshape(self.x_view.shape)
            self._run("forward", io)
            self._run("head", io)
            out[k] = logits.reshape(-1)
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x_view[...] = np.asarray(x).reshape(self.x_view.shape)
        io = IO()
        self._run("forward", io)
        self._run("head", io)
        return self.arena["logits"]

    def backward(self, dlogits):  # one program: forward, loss, backward and update run together in step()
        raise NotImplementedError("ProgramTrainer runs the whole step as one program: use step()")


def make_trainer(bundle, optim: OptimConfig, *, engine: str | None = None, **kw) -> Trainer:
    """The Trainer for `engine`: the compiled program on the C core or numpy. A bundle the program compiler
    does not cover yet (trainable lite-branch or full weights) falls back to the numpy Trainer, said once."""
    try:
        return ProgramTrainer(bundle, optim, engine=engine, **kw)
    except ProgramError as e:
        if engine == "native":
            raise
        if "fallback" not in _said:
            _said.add("fallback")
            print(f"note: step program not available for this bundle ({e}); running the numpy Trainer", file=sys.stderr)
        return Trainer(bundle, optim, **kw)


__all__ = ["ENGINES", "ProgramTrainer", "default_engine", "make_trainer"]
