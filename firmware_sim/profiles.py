"""Device profiles: small YAML files under firmware_sim/profiles/ (the one home of them; users add their own).

    p = load_profile("mcu-256k")          # a built-in name, or a path to a .yaml
    p.budgets   -> {"sram": bytes, "flash": bytes}  (MCU)  or  {"dram": bytes}  (Linux board)

Two kinds. `mcu`: sram_kb, flash_kb (frozen int8 weights live in flash, read-only; every buffer of the update
step in SRAM). `linux`: dram_mb (weights and the step's arena share DRAM). Both: clock_mhz, int8_macs_per_s
(latency = MACs / rate), optional power_mw (energy = power x time) and reserved_* (what the rest of the
firmware / the OS keeps); an MCU's optional `cpu` (cortex-m4f, cortex-m7f, cortex-m33f) is what
`firmware_sim build` compiles for and `run --target emulated` emulates. KB = 1024 bytes, MB = 2**20 bytes. Unknown, missing, negative or non-numeric
fields are errors naming the file and the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROFILES = Path(__file__).resolve().parent / "profiles"
KB, MB = 1024, 1024 ** 2

COMMON = {"name": str, "description": str, "kind": str, "clock_mhz": float, "int8_macs_per_s": float, "power_mw": float}
BY_KIND = {  # field -> required?
    "mcu": {"sram_kb": True, "flash_kb": True, "reserved_sram_kb": False, "reserved_flash_kb": False, "cpu": False},
    "linux": {"dram_mb": True, "reserved_dram_mb": False},
}
OPTIONAL = {"description", "power_mw"}
CPUS = ("cortex-m4f", "cortex-m7f", "cortex-m33f")   # Cortex-M cores with a single-precision FPU


class ProfileError(ValueError):
    """A profile that is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Profile:
    name: str                     # e.g. "mcu-256k"
    kind: str                     # "mcu" | "linux"
    memory: dict[str, int]        # region -> bytes on the chip/board ("sram", "flash" | "dram")
    reserved: dict[str, int]      # region -> bytes the firmware / OS keeps
    clock_mhz: float
    int8_macs_per_s: float        # MAC/s, for the latency estimate
    power_mw: float | None = None  # mW while training, for the energy estimate
    description: str = ""
    path: str = ""
    cpu: str | None = None        # MCU core and FPU (cortex-m4f, cortex-m7f, cortex-m33f): what `build` compiles for

    @property
    def budgets(self) -> dict[str, int]:
        """Bytes available to the learner per region (memory - reserved)."""
        return {r: self.memory[r] - self.reserved.get(r, 0) for r in self.memory}

    @property
    def step_region(self) -> str:
        """Where the update step's arena lives."""
        return "sram" if self.kind == "mcu" else "dram"

    @property
    def weight_region(self) -> str:
        """Where the frozen int8 weights live."""
        return "flash" if self.kind == "mcu" else "dram"


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def _number(path: Path, key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ProfileError(f"{path}: field '{key}' must be a number, got {v!r}")
    try:
        x = float(v)  # YAML 1.1 reads '2.16e8' (no sign) as a string
    except ValueError:
        raise ProfileError(f"{path}: field '{key}' must be a number, got {v!r}") from None
    if not x >= 0 or x == float("inf"):
        raise ProfileError(f"{path}: field '{key}' must be >= 0, got {v!r}")
    return x


def load_profile(name_or_path: str | Path) -> Profile:
    import yaml
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") or p.exists()):
        p = PROFILES / f"{name_or_path}.yaml"
    if not p.is_file():
        raise ProfileError(f"profile {str(name_or_path)!r}: no such file (built-in profiles: {', '.join(list_profiles())})")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise ProfileError(f"{p}: expected a mapping of fields, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in BY_KIND:
        raise ProfileError(f"{p}: field 'kind' must be one of {', '.join(BY_KIND)}, got {kind!r}")
    known = set(COMMON) | set(BY_KIND[kind])
    unknown = sorted(set(d) - known)
    if unknown:
        raise ProfileError(f"{p}: unknown field(s) {', '.join(unknown)} for a '{kind}' profile (known: {', '.join(sorted(known))})")
    required = (set(COMMON) - OPTIONAL) | {k for k, req in BY_KIND[kind].items() if req}
    missing = sorted(required - {k for k, v in d.items() if v is not None})
    if missing:
        raise ProfileError(f"{p}: missing field(s) {', '.join(missing)}")
    if d.get("cpu") is not None and d["cpu"] not in CPUS:
        raise ProfileError(f"{p}: field 'cpu' must be one of {', '.join(CPUS)}, got {d['cpu']!r}")
    num = {k: _number(p, k, v) for k, v in d.items() if k not in ("name", "description", "kind", "cpu") and v is not None}
    for k in ("clock_mhz", "int8_macs_per_s"):
        if num[k] <= 0:
            raise ProfileError(f"{p}: field '{k}' must be > 0, got {d[k]!r}")
    if kind == "mcu":
        memory = {"sram": int(num["sram_kb"] * KB), "flash": int(num["flash_kb"] * KB)}
        reserved = {"sram": int(num.get("reserved_sram_kb", 0) * KB), "flash": int(num.get("reserved_flash_kb", 0) * KB)}
    else:
        memory = {"dram": int(num["dram_mb"] * MB)}
        reserved = {"dram": int(num.get("reserved_dram_mb", 0) * MB)}
    for r in memory:
        if reserved[r] >= memory[r]:
            raise ProfileError(f"{p}: reserved {r} ({reserved[r]} bytes) leaves nothing of {memory[r]} bytes")
    return Profile(name=str(d["name"]), kind=kind, memory=memory, reserved=reserved, clock_mhz=num["clock_mhz"],
                   int8_macs_per_s=num["int8_macs_per_s"], power_mw=num.get("power_mw"),
                   description=str(d.get("description") or ""), path=str(p), cpu=d.get("cpu"))
