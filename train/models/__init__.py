"""Models: MobileNetV2-style networks from a block specification (YAML presets)."""
from ._net import ConvBN, InvertedResidual, LiteResidual, MobileNet, build_model, count_parameters, insert_lite_residual, lite_kernel_sizes
from ._spec import ModelSpec, StageSpec, list_presets, load_spec

__all__ = ["ConvBN", "InvertedResidual", "LiteResidual", "MobileNet", "ModelSpec", "StageSpec", "build_model", "count_parameters",
           "insert_lite_residual", "lite_kernel_sizes", "list_presets", "load_spec"]
