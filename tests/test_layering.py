"""The house's layering, read from the source: which package may import which.

Every import counts, at the top of a module or inside a function, and so does a string
given to `importlib.import_module` or `__import__`: an import that only runs on one path
is still an arrow between the layers. `cli/` sits above everything and has no rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")
# package -> the packages it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "llmq": ("api", "workers", "scheduler", "cli", *HEAVY),
    "api": ("workers", "scheduler", "cli", *HEAVY),
    "scheduler": ("workers", "api", "cli", *HEAVY),
    "workers": ("api", "scheduler", "cli"),
}
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
