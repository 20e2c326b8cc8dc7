"""Device stage: runs a bundle on the board (numpy + a LiteRT interpreter only; never torch or tensorflow).

Other stages import the device only from here (tests/test_faces.py checks it): these are the names they use.
"""
from . import checkpoint
from .bundle import (BUNDLE_FORMAT, BUNDLE_VERSION, FROZEN_PREFIX, MANIFEST, Bundle, BundleError, file_sha256, load_bundle,
                     load_trained)
from .checkpoint import CheckpointError
from .data import DataError, load_labelled, to_model_input
from .engine import Engine
from .graph import (Graph, GraphError, Op, Quant, Tensor, group_norm_params, last_k_arg, last_units, to_dict, unit_of, units,
                    verify)
from .kernels import UnsupportedOpError
from .litert_peer import SIGNATURES, LiteRTTrainer, sanitize
from .loop import LoopConfig, accuracy, train
from .memplan import Arena
from .native import build as native_build  # the C core's sources and compiler (firmware_sim builds images with them)
from .optim import OptimConfig
from .planner import BudgetError, Buffer, Plan, check_budget, live_bytes_timeline, peak_step, plan_greedy
from .requant import bias_int32, bias_scale, head_output_quant, per_channel_int8, to_tflite_layout
from .step.program import ProgramError
from .step.runner import ENGINES, ProgramTrainer, default_engine, make_trainer
from .taps import Taps, dequantize, tensor_index
from .tflite_reader import TFLiteFormatError, read_tflite
from .trainer import Trainer
from .trainables import method_names, plan_only, with_trainables

__all__ = [
    # the bundle: the contract convert writes and every runtime reads
    "BUNDLE_FORMAT", "BUNDLE_VERSION", "FROZEN_PREFIX", "MANIFEST", "Bundle", "BundleError", "file_sha256", "load_bundle",
    "load_trained",
    # the graph description shared by convert, device and the simulator; which units a `last:k` update trains
    "Graph", "GraphError", "Op", "Quant", "Tensor", "group_norm_params", "last_k_arg", "last_units", "to_dict", "unit_of",
    "units", "verify",
    # the .tflite side: reader, int8 engine, graph-tensor taps, and the requantization convert's merge writes back
    "Engine", "TFLiteFormatError", "Taps", "UnsupportedOpError", "bias_int32", "bias_scale", "dequantize",
    "head_output_quant", "per_channel_int8", "read_tflite", "tensor_index", "to_tflite_layout",
    # learning on the device: trainers, the step program, optimizer, loop, data, crash-safe checkpoints
    "ENGINES", "CheckpointError", "DataError", "LoopConfig", "OptimConfig", "ProgramError", "ProgramTrainer", "Trainer",
    "accuracy", "checkpoint", "default_engine", "load_labelled", "make_trainer", "to_model_input", "train",
    "method_names", "plan_only", "with_trainables",
    # the memory plan: buffers, planner, budgets, the arena the step runs in
    "Arena", "BudgetError", "Buffer", "Plan", "check_budget", "live_bytes_timeline", "peak_step", "plan_greedy",
    # LiteRT's training peer (train.tflite): convert writes its signatures, LiteRTTrainer drives them
    "SIGNATURES", "LiteRTTrainer", "sanitize",
    # the C core's sources and compiler (native_build.build / sources / library_path): firmware images, board slots
    "native_build",
]
