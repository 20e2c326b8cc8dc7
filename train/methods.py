"""The six adaptation methods, each a freezing policy with an assertion of exactly what trains.

Lite residual branches exist in every network (so all six are compared on the same model); they are
frozen unless the method trains them. BatchNorm is always frozen in eval mode (running statistics),
so batch size 1 works; only GroupNorm inside the lite branches normalizes per sample.
"""
from __future__ import annotations

from torch import nn

from .errors import UserError

METHODS = ("ft-full", "ft-last", "ft-norm-last", "tinytl-b", "tinytl-l", "tinytl-lb")
LITE_METHODS = ("tinytl-l", "tinytl-lb")


def _is_lite(name: str) -> bool:
    return ".lite." in f".{name}"


def trains(method: str, name: str, module: nn.Module) -> bool:
    """Does parameter `name` (owned by `module`) train under `method`?"""
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; methods: {', '.join(METHODS)}")
    if name.startswith("classifier.") or method == "ft-full":
        return True
    if _is_lite(name):
        return method in LITE_METHODS
    is_norm = isinstance(module, (nn.BatchNorm2d, nn.GroupNorm))
    if method == "ft-norm-last":
        return is_norm
    if method in ("tinytl-b", "tinytl-lb"):
        return is_norm and name.endswith(".bias")  # BN shift = the folded conv's bias
    return False


def trainable_names(model: nn.Module, method: str) -> list[str]:
    owners = {f"{m_name}.{p_name}" if m_name else p_name: m
              for m_name, m in model.named_modules() for p_name, _ in m.named_parameters(recurse=False)}
    return [n for n, _ in model.named_parameters() if trains(method, n, owners[n])]


def apply_method(model: nn.Module, method: str) -> list[str]:
    """Set requires_grad per the method and return the trainable parameter names (checked)."""
    names = trainable_names(model, method)
    if method in LITE_METHODS and not any(_is_lite(n) for n in names):
        raise UserError(f"method {method} trains lite residual branches, but the model has none (pretrain with --lite-residual)")
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    got = [n for n, p in model.named_parameters() if p.requires_grad]
    assert got == names, f"{method}: trainable set {got} differs from the policy {names}"
    return names


def set_adapt_mode(model: nn.Module, training: bool = True) -> nn.Module:
    """model.train(training), but every BatchNorm stays in eval mode (frozen running statistics)."""
    model.train(training)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model
