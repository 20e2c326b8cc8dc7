"""The model description: a block specification per stage, loaded from small YAML preset files."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._config import from_dict, read_yaml
from ..errors import UserError

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class StageSpec:
    stride: int                   # stride of the stage's first block (the others use 1)
    channels: tuple[int, ...]     # output channels per block, before the width multiplier
    kernels: tuple[int, ...]      # depthwise kernel size per block
    expansions: tuple[int, ...]   # expansion ratio per block (1 = no 1x1 expansion conv)
    present: tuple[int, ...] = () # 1 = block exists, 0 = skipped (ProxylessNAS "zero" op); empty = all

    def __post_init__(self) -> None:
        n = len(self.channels)
        present = self.present or (1,) * n
        object.__setattr__(self, "present", tuple(present))
        for field in ("kernels", "expansions", "present"):
            if len(getattr(self, field)) != n:
                raise UserError(f"stage spec: '{field}' has {len(getattr(self, field))} entries, 'channels' has {n}; give one per block")
        if self.stride not in (1, 2):
            raise UserError(f"stage spec: stride {self.stride} must be 1 or 2")


@dataclass(frozen=True)
class ModelSpec:
    name: str                     # preset name, recorded in checkpoints
    resolution: int               # input side in px (square, NCHW in PyTorch, NHWC on the device)
    in_channels: int              # 1 (gray) or 3 (RGB)
    num_classes: int              # classifier outputs
    stem_channels: int            # first 3x3 conv, before the width multiplier
    stem_stride: int              # 2 for ImageNet-style nets, 1 for tiny inputs
    stages: tuple[StageSpec, ...]
    head_channels: int = 0        # final 1x1 conv before pooling (0 = none); not scaled when width < 1
    width_multiplier: float = 1.0 # scales stem and block channels, rounded to multiples of 8
    lite_residual: bool = False   # insert TinyTL lite residual branches (all blocks but the first)
    dropout: float = 0.0          # before the classifier, training only

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, StageSpec) else from_dict(StageSpec, _tuples(s), f"model {self.name}: stage")
                       for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if self.in_channels not in (1, 3):
            raise UserError(f"model {self.name}: in_channels {self.in_channels} must be 1 or 3")
        if self.num_classes < 2:
            raise UserError(f"model {self.name}: num_classes {self.num_classes} must be at least 2")
        if self.resolution < 8:
            raise UserError(f"model {self.name}: resolution {self.resolution} px is too small (>= 8)")

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()} for s in d["stages"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model spec") -> "ModelSpec":
        return from_dict(cls, dict(d), source)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_spec(name_or_path: str, **overrides: Any) -> ModelSpec:
    """A preset name (train/models/presets/NAME.yaml) or a path to a YAML file, plus overrides."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise UserError(f"unknown model '{name_or_path}'; presets: {', '.join(list_presets())} (or a path to a .yaml spec)")
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return ModelSpec.from_dict(data, str(path))
