"""The package's shape, as DESIGN §6 and issue 17 state it: folders follow the data flow, imports
only point down, each heavy or risky library has one importer, the library never prints, command
bodies stay short, and no module is a maze."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "i2pscan"

# Lower layers never import higher ones (function-level imports included).
LAYERS = [
    ("i2pscan.errors", "i2pscan.progress", "i2pscan.version", "i2pscan.terminal"),
    ("i2pscan.io",),
    ("i2pscan.provenance",),
    ("i2pscan.model",),
    ("i2pscan.train",),
    ("i2pscan.report",),
    ("i2pscan.scan",),
    ("i2pscan.evaluate", "i2pscan.plots"),
    ("i2pscan.api",),
    ("i2pscan.describe", "i2pscan.render"),
    ("i2pscan.cli",),
    ("i2pscan",),  # __init__ and __main__
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    assert level is not None, module
    return level


def _imports(name: str, path: Path, runtime_only: bool = False) -> list[tuple[str, list[str], int, bool]]:
    """(imported module, names taken from it, line, at module level) for every import
    (``runtime_only``: not those under ``if TYPE_CHECKING:``, which never run)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top = {id(n) for n in tree.body}
    typing = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
              and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
              for stmt in block.body for n in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        if runtime_only and id(node) in typing:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((module, [a.name for a in node.names], node.lineno, id(node) in top))
    return found


def _internal(target: str, names: list[str]) -> list[str]:
    """The i2pscan modules an import statement loads (``from i2pscan import x`` may name modules)."""
    if not target.startswith("i2pscan"):
        return []
    submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return submodules or [target]


def test_no_upward_imports():
    upward = []
    for name, path in MODULES.items():
        for target, names, line, _ in _imports(name, path):
            for module in _internal(target, names):
                if module != name and _layer(module) > _layer(name):
                    upward.append(f"{name}:{line} imports {module}")
    assert upward == []


def test_no_import_cycles_between_modules():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, names, _, _ in _imports(name, path, runtime_only=True):
            for module in _internal(target, names):
                if module in MODULES and module != name and not name.startswith(module + "."):
                    graph[name].add(module)
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in graph[node]:
            visit(nxt)
        stack.pop()

    for node in graph:
        visit(node)
    # a package's __init__ importing its own modules is how a package names its API
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") or c[0].startswith(m + ".")
                                           for m in c)]
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    private = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for target, names, line, _ in _imports(name, path):
            if target.startswith("i2pscan") and target != name:
                private += [f"{name}:{line} from {target} import {n}" for n in names
                            if n.startswith("_") and not n.startswith("__")]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("i2pscan"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{name}:{node.lineno} {node.value.id}.{node.attr}")
    assert private == []


@pytest.mark.parametrize("library,allowed", [
    ("click", ("i2pscan.cli",)),
    ("rich", ("i2pscan.render",)),
    ("PIL", ("i2pscan.io",)),
    ("c2pa", ("i2pscan.provenance.c2pa",)),
    ("ray", ("i2pscan.scan.ray",)),
    ("matplotlib", ("i2pscan.plots",)),
    ("nvidia", ("i2pscan.io.region",)),
])
def test_each_library_has_its_importers(library, allowed):
    importers = sorted({name for name, path in MODULES.items() for target, _, _, _ in _imports(name, path, True)
                        if target == library or target.startswith(library + ".")})
    assert [m for m in importers if not any(m == a or m.startswith(a + ".") for a in allowed)] == []


def test_library_code_never_prints():
    printing = []
    for name, path in MODULES.items():
        if name.startswith(("i2pscan.cli", "i2pscan.render")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{name}:{node.lineno}")
    assert printing == []


def test_no_package_module_is_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_command_bodies_are_at_most_30_lines():
    long = {}
    for name, path in MODULES.items():
        if not name.startswith("i2pscan.cli."):
            continue
        for node in ast.parse(path.read_text()).body:
            commands = [d for d in getattr(node, "decorator_list", [])
                        if isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command"]
            if isinstance(node, ast.FunctionDef) and commands:
                body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body  # the docstring is help
                lines = node.end_lineno - body[0].lineno + 1
                if lines > 30:
                    long[node.name] = lines
    assert long == {}


def test_every_package_is_installed():
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    packages = sorted(name for name, path in MODULES.items() if path.name == "__init__.py")
    assert [p for p in packages if f'"{p}"' not in text] == []


@pytest.mark.parametrize("args", [["--help"], ["info", "rine-2class"], ["detectors"],
                                  ["scan", "--metadata-only", "-q", "{image}"], ["report", "{report}"]])
def test_commands_without_a_model_import_neither_torch_nor_open_clip(tmp_path, args):
    from helpers import noise_image

    image = noise_image(tmp_path / "a.png")
    report = tmp_path / "r.parquet"
    subprocess.run([sys.executable, "-m", "i2pscan", "scan", "--metadata-only", "-q", "-o", str(report), str(image)],
                   check=False, capture_output=True)
    argv = [a.format(image=image, report=report) for a in args]
    code = ("import sys, runpy; sys.argv = ['i2pscan'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('i2pscan', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'open_clip', 'sklearn') if m in sys.modules]\n"
            "sys.stderr.write('HEAVY=' + ','.join(heavy))\n")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert r.stderr.strip().endswith("HEAVY="), r.stderr[-500:]
