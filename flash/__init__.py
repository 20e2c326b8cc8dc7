"""Flash stage: put a bundle on a Raspberry Pi or Jetson over SSH, self-test it there, switch, roll back."""
from ._deploy import FlashConfig, flash, format_status, rollback, status
from ._ssh import FlashError
from ._stage import load_profile, seal, stage_slot

__all__ = ["FlashConfig", "FlashError", "flash", "format_status", "load_profile", "rollback", "seal", "stage_slot", "status"]
