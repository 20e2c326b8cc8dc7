"""Firmware simulator: the device runtime on the host as a given target (MCU / Pi / Jetson profile), under
hard SRAM / flash / DRAM budgets, with reports, plots and power-loss injection. Imports device/ (numpy);
only `fit` converts checkpoints (train/ + convert/, host side).

    from firmware_sim import load_profile, simulate, SimConfig

Modules by job: run (the learning loop on a target: refusal, power cuts, reboots), boot (the step's budget and
a trainer in an arena of exactly that size), flash_image (frozen weights in read-only flash; the one count of
their bytes), trainables (trainable sets planned with the device's rules; the deepest `last:k` that fits),
cost (MACs per step), faults (power cuts through the runtime's fault seam), fit, report, profiles, firmware
and emulated (the step as a Cortex-M image, and the emulated chip it runs on), tflm (export for TFLM).
"""
from .flash_image import FlashError, FlashWriteFault
from .profiles import Profile, ProfileError, list_profiles, load_profile
from .run import SimConfig, SimRefused, simulate

__all__ = [
    "Profile", "ProfileError", "list_profiles", "load_profile",   # targets: built-in profiles and users' YAML files
    "SimConfig", "SimRefused", "simulate",                         # a run on a target (refused before any step if too big)
    "FlashError", "FlashWriteFault",                               # the frozen weights do not fit / were written to
]
