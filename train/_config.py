"""Frozen-dataclass configs built from small YAML preset files; unknown keys are an error."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError

T = TypeVar("T")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def from_dict(cls: type[T], data: dict[str, Any], source: str) -> T:
    """Build dataclass `cls` from `data`; an unknown key names the source and the known keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as e:  # a required field is missing
        raise UserError(f"{source}: {e}") from None
