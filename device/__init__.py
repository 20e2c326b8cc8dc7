"""Device stage: runs a bundle on the board (numpy + a LiteRT interpreter only; never torch or tensorflow)."""
from .bundle import Bundle, BundleError, load_bundle
from .graph import Graph, GraphError, Op, Quant, Tensor, verify
from .litert_peer import LiteRTTrainer

__all__ = ["Bundle", "BundleError", "Graph", "GraphError", "LiteRTTrainer", "Op", "Quant", "Tensor", "load_bundle", "verify"]
