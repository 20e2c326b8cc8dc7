"""The import rule (DESIGN.md): a stage uses another stage only through its face, the package's `__init__.py`,
and never through a `_private` module. Every .py file of every stage is parsed with `ast` (nothing is imported)
and each import of another stage is checked:
  (a) allowed: `import device` (then only `device.X` with X in device/__init__.py's `__all__`) and
      `from device import X` with X in that `__all__`; anything deeper (`from device.planner import plan`,
      `import device.checkpoint`, `from device import planner` when the face does not export it) is a violation;
  (b) never: a module whose name starts with `_` (`from convert._build import ...`, `from convert import _build`),
      whatever `__all__` says.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("train", "convert", "device", "firmware_sim", "flash", "fleet")


def face(stage: str, root: Path = ROOT) -> set[str]:
    """The names `stage/__init__.py` lists in `__all__` (read from the source: importing would load torch)."""
    tree = ast.parse((root / stage / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The module an ImportFrom names, relative imports resolved against `module` (the file's dotted name)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")[:-node.level]   # a file's own module is its last part: level 1 is its package
    return ".".join(package + ([node.module] if node.module else []))


def _fix(stage: str, what: str) -> str:
    return (f"import it from the face, `from {stage} import {what}`, and list it in {stage}/__init__.py's __all__ "
            f"(grouped, with what it is for) if another stage really needs it")


def violations(source: str, path: str, faces: dict[str, set[str]]) -> list[str]:
    """'path:line: problem; fix' for every import in `source` (the file at `path`, relative to the repo) that
    breaks the rule. faces: stage -> its `__all__`."""
    stage = path.split("/")[0]
    module = ".".join(Path(path).with_suffix("").parts)   # a package's __init__ counts as a module inside it
    out: list[str] = []
    bound: dict[str, str] = {}   # local name -> stage, for `import device` (its attributes are checked below)
    tree = ast.parse(source)

    def bad(node: ast.AST, text: str) -> None:
        out.append(f"{path}:{node.lineno}: {text}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top, *rest = a.name.split(".")
                if top not in faces or top == stage:
                    continue
                if any(p.startswith("_") for p in rest):
                    bad(node, f"`import {a.name}` imports a private module of {top}/; {_fix(top, rest[-1])}")
                elif rest:
                    bad(node, f"`import {a.name}` reaches past {top}/'s face; {_fix(top, '...')}")
                else:
                    bound[a.asname or top] = top
        elif isinstance(node, ast.ImportFrom):
            name = _absolute(node, module)
            top, *rest = name.split(".") if name else [""]
            if top not in faces or top == stage:
                continue
            what = ", ".join(a.name for a in node.names)
            if any(p.startswith("_") for p in rest):
                bad(node, f"`from {name} import {what}` imports a private module of {top}/; {_fix(top, what)}")
            elif rest:
                bad(node, f"`from {name} import {what}` reaches past {top}/'s face; {_fix(top, what)}")
            else:
                for a in node.names:
                    if a.name.startswith("_"):
                        bad(node, f"`from {top} import {a.name}` imports a private name of {top}/; use what its face "
                                  f"exports instead")
                    elif a.name == "*" or a.name not in faces[top]:
                        bad(node, f"`from {top} import {a.name}`: {a.name} is not in {top}/__init__.py's __all__; "
                                  f"{_fix(top, a.name)}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr not in faces[bound[node.value.id]]):
            top = bound[node.value.id]
            bad(node, f"`{node.value.id}.{node.attr}`: {node.attr} is not in {top}/__init__.py's __all__; "
                      f"{_fix(top, node.attr)}")
    return out


def stage_files(root: Path = ROOT) -> list[Path]:
    return [p for s in STAGES if (root / s).is_dir() for p in sorted((root / s).rglob("*.py"))]


def test_stages_import_each_other_only_through_their_faces():
    faces = {s: face(s) for s in STAGES if (ROOT / s / "__init__.py").exists()}
    files = stage_files()
    assert len(files) > 50 and set(faces) >= {"train", "convert", "device", "firmware_sim", "flash"}
    found = [v for p in files for v in violations(p.read_text(), p.relative_to(ROOT).as_posix(), faces)]
    assert not found, "imports past a stage's face:\n" + "\n".join(found)


def test_the_rule_catches_each_kind_of_violation():
    faces = {"device": {"load_bundle", "checkpoint"}, "convert": {"convert"}, "firmware_sim": {"simulate"}}
    src = "\n".join([
        "from device import load_bundle, checkpoint",      # 1 fine: both in the face
        "import device",                                   # 2 fine
        "x = device.load_bundle",                          # 3 fine
        "from device.planner import plan_greedy",          # 4 (a) past the face
        "import device.step.runner",                       # 5 (a)
        "from device import planner",                      # 6 (a) a submodule the face does not export
        "from convert._build import build_graph",          # 7 (b) private module
        "from convert import _build",                      # 8 (b) private name
        "y = device.trainer",                              # 9 (a) attribute past the face
        "from . import faults",                            # 10 fine: its own stage
        "from ..convert import convert",                   # 11 fine: relative, yet through the face
        "from ..device.bundle import Bundle",              # 12 (a) relative, past the face
        "from firmware_sim.run import simulate",           # 13 fine: its own stage
    ])
    got = violations(src, "firmware_sim/example.py", faces)
    lines = [int(v.split(":")[1]) for v in got]
    assert lines == [4, 5, 6, 7, 8, 12, 9], got
    assert all(v.startswith("firmware_sim/example.py:") for v in got)
    assert "`from device import plan_greedy`" in got[0] and "private module" in got[3] and "private name" in got[4]
    assert violations("from device.graph import Graph\n", "device/x.py", faces) == []   # inside its own stage


def test_every_face_name_exists():
    import importlib
    for s in STAGES:
        if (ROOT / s / "__init__.py").exists():
            mod = importlib.import_module(s)
            missing = [n for n in face(s) if not hasattr(mod, n)]
            assert not missing, f"{s}/__init__.py lists {missing} in __all__ but does not provide them"


@pytest.mark.parametrize("stage", ["device", "firmware_sim", "flash", "train", "convert"])
def test_faces_import_without_torch_or_tensorflow(stage):
    """device/ runs on a board (numpy + LiteRT only); the other faces stay cheap to import (their CLIs' --help)."""
    code = (f"import sys, {stage}; heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow')); "
            "print(heavy); sys.exit(bool(heavy))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"`import {stage}` loads {r.stdout.strip()} {r.stderr[-500:]}"
