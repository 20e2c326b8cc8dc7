"""Firmware simulator: the device runtime on the host as a given target (MCU / Pi / Jetson profile), under
hard SRAM / flash / DRAM budgets, with reports, plots and power-loss injection. Imports device/ (numpy);
only `fit` converts checkpoints (train/ + convert/, host side).

    from firmware_sim import load_profile, simulate, SimConfig
"""
from .profiles import Profile, ProfileError, list_profiles, load_profile
from .run import SimConfig, SimRefused, simulate
from .target import FlashError, FlashWriteFault

__all__ = ["FlashError", "FlashWriteFault", "Profile", "ProfileError", "SimConfig", "SimRefused", "list_profiles",
           "load_profile", "simulate"]
