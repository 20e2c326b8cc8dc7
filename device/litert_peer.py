"""Drive LiteRT's training peer (`train.tflite`, written by `convert --litert-training`) with numpy and the
stock interpreter only, so it runs on a board as the rest of device/ does.

The model's signatures: train(x, y, lr) -> loss, infer(x) -> logits, save() -> parameters,
restore(parameters). Signature keys are parameter names with every character outside [A-Za-z0-9_]
replaced by '_' (convert/_litert_train.sanitize writes them; `sanitize` below must stay the same rule).
"""
from __future__ import annotations

import re

import numpy as np

SIGNATURES = ("train", "infer", "save", "restore")


def sanitize(name: str) -> str:
    """A parameter name as a signature input/output key ('blocks.0.project.bias' -> 'blocks_0_project_bias')."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # an old board that already has tflite-runtime
        from tflite_runtime.interpreter import Interpreter  # type: ignore
    return Interpreter


class LiteRTTrainer:
    """Drive a train.tflite with the stock LiteRT interpreter (signature runners share its variables).

        tr = LiteRTTrainer("bundle/train.tflite", names)   # names: the manifest's litert_training.params
        loss = tr.step(x, y, lr)                            # x: float32 (1, H, W, C) normalized; y: class
        np.savez("trained.npz", **tr.save())
    """

    def __init__(self, path, names: list[str] | None = None, *, threads: int | None = None):
        self.it = _interpreter_class()(model_path=str(path), num_threads=threads)
        self.run = {k: self.it.get_signature_runner(k) for k in SIGNATURES}
        self.shape = tuple(self.it.get_signature_runner("infer").get_input_details()["x"]["shape"])
        self.names = list(names) if names else None

    def _x(self, x) -> np.ndarray:
        return np.asarray(x, np.float32).reshape(self.shape)

    def step(self, x, y: int, lr: float) -> float:
        """One Adam step on one image; the loss before the update."""
        return float(self.run["train"](x=self._x(x), y=np.array([y], np.int32), lr=np.float32(lr))["loss"])

    def infer(self, x) -> np.ndarray:
        return self.run["infer"](x=self._x(x))["logits"]

    def save(self) -> dict[str, np.ndarray]:
        """Current trainable values, by parameter name in save() order (by signature key without names)."""
        out = self.run["save"]()  # keys come back sorted
        if self.names is None:
            return {k: np.array(v) for k, v in out.items()}
        return {n: np.array(out[sanitize(n)]) for n in self.names}

    def restore(self, values: dict[str, np.ndarray]) -> None:
        """Assign the trainable parameters (Adam moments and step are kept)."""
        self.run["restore"](**{sanitize(k): np.asarray(v, np.float32) for k, v in values.items()})
