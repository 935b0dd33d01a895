"""The house's layering, read from the source: which package may import which.

Every import counts, at the top of a module or inside a function, and so does a string
given to `importlib.import_module` or `__import__`: an import that only runs on one path
is still an arrow between the layers. `cli/` sits above everything and has no rule.
Within the layers, no two modules import each other while they load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers")
# package -> the packages it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "llmq": ("api", "workers", "scheduler", "cli", *HEAVY),
    "api": ("workers", "scheduler", "cli", *HEAVY),
    "scheduler": ("workers", "api", "cli", *HEAVY),
    "workers": ("api", "scheduler", "cli"),
}
PACKAGES = (*FORBIDDEN, "cli")
IMPORT_FUNCTIONS = {"import_module", "__import__"}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `tree`, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and _called_name(node.func) in IMPORT_FUNCTIONS:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((node.lineno, first.value))
    return found


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def violations(package: str, source: str, path: str) -> list[str]:
    """One line per import in `source` (a file of `package`) that its rule forbids."""
    found = []
    for line, module in imported_modules(ast.parse(source, path)):
        top = module.split(".")[0]
        if top in FORBIDDEN.get(package, ()):
            found.append(f"{path}:{line} imports {module} ({package} must not import {top})")
    return found


def scan(root: Path) -> tuple[list[str], int]:
    """Every violation under `root`, and how many files were read."""
    found, files = [], 0
    for package in FORBIDDEN:
        for path in sorted((root / package).rglob("*.py")):
            files += 1
            found += violations(package, path.read_text(), str(path.relative_to(root)))
    return found, files


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(tree: ast.Module, module: str, is_package: bool) -> list[str]:
    """Modules imported while `module` loads: not those inside functions or TYPE_CHECKING."""
    found: list[str] = []
    here = module.split(".") if is_package else module.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]))
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = here[: len(here) - child.level + 1] if child.level else []
                base = ".".join([*base, *([child.module] if child.module else [])])
                found.extend(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return found


def import_cycles(root: Path) -> list[list[str]]:
    """Each cycle of load-time imports between the packages' modules, once."""
    paths = {module_name(root, p): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for name in load_time_imports(tree, module, path.name == "__init__.py"):
            parts = name.split(".")
            while parts and ".".join(parts) not in paths:
                parts.pop()  # `from pkg import name`: name is not a module of its own
            if parts and ".".join(parts) != module:
                targets.add(".".join(parts))
        graph[module] = targets
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    trail: list[str] = []

    def walk(module: str) -> None:
        state[module] = "open"
        trail.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                walk(target)
        trail.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return cycles


def test_every_package_keeps_its_layer():
    found, files = scan(ROOT)
    assert files > 50, f"only {files} files read: the scan is looking in the wrong place"
    assert not found, "imports across the layering:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("api", "import torch\n", ["api/x.py:1 imports torch (api must not import torch)"]),
        (
            "api",
            "def f():\n    from workers.app import app\n",
            ["api/x.py:2 imports workers.app (api must not import workers)"],
        ),
        (
            "llmq",
            "import importlib\n\ndef f():\n    return importlib.import_module('scheduler.main')\n",
            ["llmq/x.py:4 imports scheduler.main (llmq must not import scheduler)"],
        ),
        (
            "llmq",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cli import main\n",
            ["llmq/x.py:3 imports cli (llmq must not import cli)"],
        ),
        (
            "llmq",
            "x = __import__('transformers')\n",
            ["llmq/x.py:1 imports transformers (llmq must not import transformers)"],
        ),
        (
            "scheduler",
            "import os, workers.tasks\n",
            ["scheduler/x.py:1 imports workers.tasks (scheduler must not import workers)"],
        ),
        (
            "workers",
            "class A:\n    def f(self):\n        import api.app\n",
            ["workers/x.py:3 imports api.app (workers must not import api)"],
        ),
        ("workers", "import torch\nfrom . import tasks\nfrom llmq import events\n", []),
        ("api", "import torchvision_like\nfrom llmq.catalog import Catalog\n", []),
        ("cli", "import workers.app, scheduler.main, api.app\n", []),
    ],
)
def test_the_check_names_file_line_and_rule(package, source, expected):
    assert violations(package, source, f"{package}/x.py") == expected


def test_scan_finds_a_forbidden_import_in_a_file(tmp_path):
    (tmp_path / "api" / "routes").mkdir(parents=True)
    (tmp_path / "api" / "routes" / "bad.py").write_text('"""Doc."""\n\nimport workers.app\n')
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "ok.py").write_text("import torch\n")
    found, files = scan(tmp_path)
    assert files == 2
    assert found == [
        "api/routes/bad.py:3 imports workers.app (api must not import workers)",
    ]


def test_no_two_modules_import_each_other_while_loading():
    cycles = import_cycles(ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_a_cycle_is_found(tmp_path):
    (tmp_path / "workers" / "engines").mkdir(parents=True)
    (tmp_path / "workers" / "__init__.py").write_text("")
    (tmp_path / "workers" / "app.py").write_text("x = 1\nimport workers.tasks\n")
    (tmp_path / "workers" / "tasks.py").write_text("from workers.app import x\n")
    (tmp_path / "workers" / "engines" / "__init__.py").write_text("from . import echo\n")
    (tmp_path / "workers" / "engines" / "echo.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers.engines import x\n"
        "def f():\n    from workers import engines\n"
    )
    assert import_cycles(tmp_path) == [["workers.app", "workers.tasks", "workers.app"]]
