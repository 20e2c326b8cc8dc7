"""Conversion stage: checkpoint -> bundle (int8 .tflite + trainable graph + manifest), and merging
device-learned parameters back into a stock int8 .tflite.

    from convert import ConvertConfig, convert, merge
    convert(ConvertConfig(checkpoint="runs/adapt/model.pt", out="bundle"))
    merge("bundle", "trained.npz", "adapted.tflite")
"""
from ._bundle import DEVICE_METHODS, ConvertConfig, convert
from ._merge import merge

__all__ = ["ConvertConfig", "DEVICE_METHODS", "convert", "merge"]
