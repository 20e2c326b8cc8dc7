"""Conversion stage: checkpoint -> bundle (int8 .tflite + trainable graph + manifest), and merging
device-learned parameters back into a stock int8 .tflite.

    from convert import ConvertConfig, convert, merge
    convert(ConvertConfig(checkpoint="runs/adapt/model.pt", out="bundle"))
    merge("bundle", "trained.npz", "adapted.tflite")

`ConvertConfig(..., litert_training=True)` also writes train.tflite (LITERT_METHODS only), driven on the
host or a board by device.LiteRTTrainer.
"""
__all__ = ["ConvertConfig", "DEVICE_METHODS", "LITERT_METHODS", "convert", "last_blocks", "load_model", "merge", "nhwc"]


def __getattr__(name: str):
    """Lazy: `python -m convert --help` must not wait for TensorFlow to load."""
    if name in ("ConvertConfig", "DEVICE_METHODS", "convert", "last_blocks", "load_model", "nhwc"):
        from . import _bundle
        return getattr(_bundle, name)
    if name == "LITERT_METHODS":
        from . import _litert_train
        return _litert_train.METHODS
    if name == "merge":
        from ._merge import merge
        return merge
    raise AttributeError(f"module 'convert' has no attribute {name!r}")
