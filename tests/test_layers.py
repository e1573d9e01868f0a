"""The house layout: data flows one way, and no module imports from a layer above its own.

Layers, lowest first (README "Layout"): sorter.core < sorter.plan < sorter.wire < sorter.audit <
sorter.engine < scanners, plc < simulators; sorter.cli dispatches and reaches the layers above
the engine only through entry points. Every import counts, also one inside a function, except
those under `if TYPE_CHECKING:` (annotations only, never run).
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# For each layer: the packages its modules may import from (sorter._shared: the compiled
# helpers every compiled module shares; it imports nothing of ours).
CORE = {"sorter._shared", "sorter.jsonlog", "sorter.core"}
ALLOWED = {
    "sorter._shared": {"sorter._shared"},
    "sorter.jsonlog": {"sorter.jsonlog"},        # the log line shape every process uses
    "sorter.core": CORE,
    "sorter.plan": CORE | {"sorter.plan"},
    "sorter.wire": CORE | {"sorter.wire"},
    "sorter.audit": CORE | {"sorter.wire", "sorter.audit"},
    "sorter.engine": CORE | {"sorter.plan", "sorter.wire", "sorter.audit", "sorter.engine"},
    "sorter.cli": CORE | {"sorter.plan", "sorter.wire", "sorter.audit", "sorter.engine",
                          "sorter.cli", "sorter.replay"},
    "sorter.replay": CORE | {"sorter.plan", "sorter.wire", "sorter.audit", "sorter.replay"},
    "sorter": {"sorter"},
    "scanners": CORE | {"sorter.wire", "scanners"},
    "plc": CORE | {"sorter.plan", "sorter.wire", "plc"},
    "simulators": {"sorter", "scanners", "plc", "simulators", "dashboard"},
    "dashboard": CORE | {"sorter.plan", "sorter.wire", "sorter.audit", "sorter.engine", "dashboard"},
}
OURS = ("sorter", "scanners", "plc", "simulators", "dashboard")


def layer_of(module: str) -> str:
    """The most specific key of ALLOWED that `module` falls in."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in ALLOWED:
            return name
    raise KeyError(module)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, level: int, here: str, is_package: bool) -> str:
    if not level:
        return module
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def python_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import that runs, resolved to absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    is_package = path.name == "__init__.py"
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                typing_only.update(id(n) for n in ast.walk(sub))
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, here, is_package)
            # `from sorter import wire` imports the module sorter.wire
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\s+([\w, ]+)|c?import\s+([\w.]+))",
                            re.M)


def cython_imports(path: Path) -> list[tuple[int, str]]:
    text = path.read_text()
    found = []
    for m in _CYTHON_IMPORT.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if m.group(3):
            found.append((line, m.group(3)))
        else:
            found += [(line, f"{m.group(1)}.{n.strip()}") for n in m.group(2).split(",")
                      if n.strip()]
    return found


def our_modules() -> list[Path]:
    paths = []
    for top in OURS:
        d = ROOT / top
        if d.is_dir():
            paths += [p for p in d.rglob("*") if p.suffix in (".py", ".pyx", ".pxd")]
    return sorted(paths)


def upward_imports(path: Path) -> list[str]:
    here = module_name(path)
    allowed = ALLOWED[layer_of(here)]
    imports = python_imports(path) if path.suffix == ".py" else cython_imports(path)
    bad = []
    for line, target in imports:
        if target.split(".")[0] not in OURS:
            continue
        if not any(target == a or target.startswith(a + ".") for a in allowed):
            bad.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target}")
    return bad


@pytest.mark.parametrize("path", our_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_from_a_layer_above_it(path):
    assert upward_imports(path) == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The check is not vacuous: an import of the engine from the core, a relative one from
    the wire codec, one inside a function and a cimport are all caught."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "sorter" / "core").mkdir(parents=True)
    (tmp_path / "sorter" / "wire").mkdir(parents=True)
    core = tmp_path / "sorter" / "core" / "x.py"
    core.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from sorter.engine import Engine\n"
                    "def f():\n    from sorter.engine import launch\n")
    wire = tmp_path / "sorter" / "wire" / "y.py"
    wire.write_text("from ..audit import files\nfrom . import codec\n")
    pyx = tmp_path / "sorter" / "core" / "_z.pyx"
    pyx.write_text("from sorter.engine._turn cimport EngineTurn\nfrom sorter._shared cimport now_ns\n")
    assert upward_imports(core) == ["sorter/core/x.py:5: sorter.core.x imports sorter.engine.launch"]
    assert upward_imports(wire) == ["sorter/wire/y.py:1: sorter.wire.y imports sorter.audit.files"]
    assert upward_imports(pyx) == [
        "sorter/core/_z.pyx:1: sorter.core._z imports sorter.engine._turn.EngineTurn"]


def test_layers_above_the_engine_are_commands_by_entry_point():
    """`sorter scanner` and `sorter demo` reach the CLI without sorter importing them."""
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="sorter.commands")}
    assert names.get("scanner") == "scanners.cli:add_parser"
    assert names.get("demo") == "simulators.cli:add_parser"
    assert names.get("dashboard") == "dashboard.cli:add_parser"
