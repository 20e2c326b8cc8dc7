"""Power on a target: the step's budget from the profile, then a trainer whose plan was checked against it
before any arena existed, moved into an arena of exactly that budget (an MCU's SRAM; a board: plan + guard).

    tr = build_trainer(bundle, profile, optim)   # BudgetError (carrying .plan) when the step does not fit
"""
from __future__ import annotations

from device import Bundle, OptimConfig, Trainer, make_trainer

from .flash_image import weight_bytes
from .profiles import Profile

MAX_ARENA = 16 * 2 ** 20  # bytes: budgets up to this are allocated whole (every MCU)
GUARD = 64 * 1024         # bytes past the plan's peak (holding a canary) when the budget is larger


def budgets_for(profile: Profile, weights: int = 0) -> dict[str, int]:
    """The step arena's budget: SRAM (MCU), or DRAM less the weights that share it (Linux)."""
    region = profile.step_region
    b = profile.budgets[region]
    return {region: b - (weights if profile.weight_region == region else 0)}


def build_trainer(bundle: Bundle, profile: Profile, optim: OptimConfig, *, weights: int | None = None,
                  engine: str | None = None, firmware=None, keep_flash: bytes | None = None) -> Trainer:
    """A Trainer whose plan was checked against the profile before any arena existed (BudgetError otherwise,
    carrying .plan), then moved into an arena of exactly the budget (MCU) or the plan plus a guard zone (board).
    engine: "native" (the step program on the C core), "numpy" (the same program on numpy), None: native if built;
    firmware: an image folder (`firmware_sim build`): the program runs on the emulated MCU instead (keep_flash: its
    checkpoint slots from before a power cut: flash keeps them)."""
    region = profile.step_region
    if weights is None:
        weights = weight_bytes(bundle)
    budgets = budgets_for(profile, weights)
    # an MCU's arena is exactly its budget; a board's DRAM budget (hundreds of MB) gets the plan plus a guard zone
    def capacity(plan) -> dict[str, int]:
        return {r: b if b <= MAX_ARENA else plan.peak[r] + GUARD for r, b in budgets.items()}
    if firmware is not None:   # the step program runs on the emulated chip (the image in `firmware`)
        from .emulated import EmulatedTrainer
        return EmulatedTrainer(bundle, optim, firmware, keep_flash=keep_flash, budgets=budgets, region=region,
                               arena_capacity=capacity)
    return make_trainer(bundle, optim, budgets=budgets, region=region, engine=engine, arena_capacity=capacity)
