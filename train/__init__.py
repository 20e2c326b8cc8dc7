"""Training stage (PyTorch): datasets -> pretrain -> TinyTL adapt -> weights-only checkpoint (.pt) + metrics.

    python -m train pretrain --data fashion-mnist --model mcunet-tiny --epochs 6 --out runs/pretrain

What other stages use (convert rebuilds the checkpoint's network as its graph; firmware_sim reads a checkpoint's
metadata); everything else is the stage's own. Lazy: importing the face loads no torch until a name is used.
"""
__all__ = [
    "UserError",                                                  # bad input: the message names the file and the fix
    "load_checkpoint",                                            # .pt -> (model, metadata)
    "ConvBN", "InvertedResidual", "LiteResidual", "MobileNet",    # the network's modules, walked by convert's graph builder
    "prepare_model",                                              # a checkpoint's model made ready for a TinyTL method
    "Preprocess", "load_dataset", "preprocess",                   # datasets and their preprocessing (calibration data)
]

_HOME = {"UserError": "errors", "load_checkpoint": "checkpoint", "ConvBN": "models", "InvertedResidual": "models",
         "LiteResidual": "models", "MobileNet": "models", "prepare_model": "adapt", "Preprocess": "data",
         "load_dataset": "data", "preprocess": "data"}


def __getattr__(name: str):
    """Lazy: `from train import UserError` must not wait for torch to load."""
    if name in _HOME:
        import importlib
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
