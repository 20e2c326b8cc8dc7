"""Device stage: runs a bundle on the board (numpy + a LiteRT interpreter only; never torch or tensorflow)."""
from .bundle import Bundle, BundleError, load_bundle
from .graph import Graph, GraphError, Op, Quant, Tensor, verify
from .litert_peer import LiteRTTrainer
from .native import build as native_build  # the C core's sources and compiler (firmware_sim builds images with them)
from .step.program import ProgramError
from .step.runner import ENGINES, ProgramTrainer, default_engine, make_trainer

__all__ = ["ENGINES", "Bundle", "BundleError", "Graph", "GraphError", "LiteRTTrainer", "Op", "ProgramError", "ProgramTrainer", "native_build",
           "Quant", "Tensor", "default_engine", "load_bundle", "make_trainer", "verify"]
