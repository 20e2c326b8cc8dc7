"""Trainable sets: the same bundle planned with other parameters learning (a method, a `last:k` partial update),
with the device's own buffer rules, and the deepest partial update that fits a budget.

    names = method_names(bundle, "tinytl-b")                    # graph parameter names the method trains
    plan = plan_for(bundle, last_k(names, 4), OptimConfig("sgd"))  # the device's plan, nothing allocated
    k, peak, bias_layers = deepest(names, budget, lambda ns: plan_for(bundle, ns, optim).peak["sram"])
"""
from __future__ import annotations

from typing import Callable

from device import (BudgetError, Bundle, OptimConfig, Plan, Trainer, method_names, plan_greedy, plan_only,  # noqa: F401
                    unit_of, units, with_trainables)
from device import last_units as last_k  # `--trainable-blocks last:k`: the last k units' names plus the classifier's


def plan_for(bundle: Bundle, names: list[str], optim: OptimConfig, region: str = "sram") -> Plan:
    """The device's plan of the update step with `names` trainable, without allocating it: a zero budget makes
    the Trainer raise (carrying its plan) before it builds an arena."""
    b = with_trainables(bundle, names)
    try:
        Trainer(b, optim, planner=plan_greedy, budgets={region: 0}, region=region)
    except BudgetError as e:
        return e.plan
    raise AssertionError("unreachable: a non-empty plan cannot fit 0 bytes")


def bias_layers(names: list[str]) -> int:
    """Conv bias layers among `names` (lite-branch and classifier biases not counted)."""
    return sum(1 for n in names if n.endswith(".bias") and ".lite." not in n and unit_of(n) != "classifier")


def deepest(names: list[str], budget: int, peak: Callable[[list[str]], int]) -> tuple[int, int, int] | None:
    """(k, peak bytes, conv bias layers) of the deepest `last:k` partial update of `names` whose peak fits
    `budget`, or None when not even the classifier alone fits. peak(trainable names) -> bytes: the planned peak
    (plan_for's, or one re-planned under other runtime rules: fit.py).
    Binary search on k in [0, units]: the peak grows with k (each extra unit only adds buffers and extends the
    backward), so keep lo with peak(lo) fitting and hi the first known not to, and halve; each k planned once."""
    memo: dict[int, int] = {}

    def at(k: int) -> int:
        if k not in memo:
            memo[k] = peak(last_k(names, k))
        return memo[k]
    if at(0) > budget:
        return None
    lo, hi = 0, len(units(names))  # invariant: at(lo) fits
    if at(hi) <= budget:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) <= budget else (lo, mid)
    return lo, at(lo), bias_layers(last_k(names, lo))
