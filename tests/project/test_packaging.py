"""The dependency extras in pyproject.toml match what each package imports.

Each package may import only what the base dependencies and its own extra install, counting
imports inside functions; the top layer (the `llmq` command) imports at module level only what
every image has. The API and scheduler installs must not bring torch. Imports are read from the
source (AST); which distribution provides a module, and what a distribution requires, from the
installed metadata.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OURS = {"llmq", "api", "workers", "scheduler", "cli", "bench", "reliability", "tests", "migrations"}
# The extras each package may use on top of the base; packages that are not installed (bench,
# reliability, tests) are run from a full developer install. The top layer, the `llmq` command,
# has its own test below.
EXTRAS = {
    "llmq": ("semantic",),  # the semantic cache's modules; nothing else in llmq/ needs it
    "migrations": (),
    "api": ("api",),
    "workers": ("worker",),
    "scheduler": ("scheduler",),
    "bench": ("all", "dev"),
    "reliability": ("all", "dev"),
    "tests": ("all", "dev"),
}
HEAVY = {"torch", "transformers", "accelerate"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Import:
    module: str  # the dotted name imported
    path: Path
    line: int
    in_function: bool
    optional: bool  # inside `try: ... except ImportError`

    @property
    def top(self) -> str:
        return self.module.split(".")[0]


def _catches_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    for handler in node.handlers:
        caught = handler.type
        kinds = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if any(isinstance(k, ast.Name) and k.id in names for k in kinds):
            return True
    return False


def imports_of(path: Path) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, optional: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(
                Import(a.name, path, node.lineno, in_function, optional) for a in node.names
            )
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(node.module, path, node.lineno, in_function, optional))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            found.extend(
                Import(f"{node.module}.{a.name}", path, node.lineno, in_function, optional)
                for a in node.names
                if node.module.split(".")[0] in OURS and module_file(f"{node.module}.{a.name}")
            )
        in_function |= isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.body:
                visit(child, in_function, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, in_function, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, in_function, optional)

    visit(ast.parse(path.read_text(), str(path)), False, False)
    return found


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top not in OURS and top not in sys.stdlib_module_names and top != "__future__"


# --- what the extras install ----------------------------------------------------------------


def requirements(*extras: str) -> list[Requirement]:
    """The base dependencies plus those of each extra (an extra may name others of llmq)."""
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    optional = PYPROJECT["project"]["optional-dependencies"]
    todo = list(extras)
    while todo:
        for raw in optional[todo.pop()]:
            req = Requirement(raw)
            if canonical(req.name) == "llmq":
                todo += sorted(req.extras)
            else:
                reqs.append(req)
    return reqs


@cache
def _requires(dist: str, extras: frozenset[str]) -> tuple[Requirement, ...]:
    try:
        raw = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return ()
    wanted = []
    for req in map(Requirement, raw):
        envs = [{"extra": e} for e in (*extras, "")]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            wanted.append(req)
    return tuple(wanted)


def installed_by(*extras: str) -> set[str]:
    """Every distribution that installing llmq with these extras brings, requirements of
    requirements included (as the installed metadata states them)."""
    seen: set[str] = set()
    todo = requirements(*extras)
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in seen:
            continue
        seen.add(name)
        todo += _requires(req.name, frozenset(req.extras))
    return seen


@cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def provided(module: str, installed: set[str]) -> bool:
    return any(canonical(d) in installed for d in _providers().get(module.split(".")[0], []))


# --- the packages and the top layer ---------------------------------------------------------


def top_layer_files() -> set[Path]:
    """The `llmq` command: the module its script entry names, and the cli package."""
    module = PYPROJECT["project"]["scripts"]["llmq"].split(":")[0]
    files = {module_file(module)} | set((ROOT / "cli").rglob("*.py"))
    return {f for f in files if f is not None}


def package_files(package: str) -> list[Path]:
    return sorted(set((ROOT / package).rglob("*.py")) - top_layer_files())


def module_level_closure(module: str) -> list[Import]:
    """The third-party imports that run when `module` is imported: its module-level imports
    and those of every module of ours they import, transitively."""
    seen: set[Path] = set()
    todo = [module]
    third_party: list[Import] = []
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        for imp in imports_of(path):
            if imp.in_function or imp.optional:
                continue
            if is_third_party(imp.module):
                third_party.append(imp)
            else:
                parts = imp.module.split(".")
                todo += [".".join(parts[: i + 1]) for i in range(len(parts))]
    return third_party


def missing(imports: list[Import], installed: set[str]) -> list[str]:
    return sorted(
        f"{imp.path.relative_to(ROOT)}:{imp.line} imports {imp.module}"
        for imp in imports
        if is_third_party(imp.module) and not imp.optional and not provided(imp.module, installed)
    )


@pytest.mark.parametrize("package", [p for p in EXTRAS if (ROOT / p).is_dir()])
def test_each_package_imports_only_what_its_extras_install(package):
    installed = installed_by(*EXTRAS[package])
    imports = [imp for path in package_files(package) for imp in imports_of(path)]
    assert imports, f"no imports read in {package}/"
    unprovided = missing(imports, installed)
    assert not unprovided, f"not installed by the base + {EXTRAS[package]}: {unprovided}"


def test_the_command_starts_in_every_image_and_runs_every_process_in_the_full_one():
    files = top_layer_files()
    assert files
    imports = [imp for path in files for imp in imports_of(path)]
    module_level = [imp for imp in imports if not imp.in_function]
    script = PYPROJECT["project"]["scripts"]["llmq"].split(":")[0]
    for needs_more in (
        missing(module_level, installed_by()),
        missing(module_level_closure(script), installed_by()),
    ):
        assert not needs_more, f"the command needs more than the base: {needs_more}"
    unprovided = missing(imports, installed_by("all"))
    assert not unprovided, unprovided


def test_the_webhook_sender_runs_from_the_base_install():
    # compose and Kubernetes run it from the image without torch
    closure = module_level_closure("workers.webhook_app")
    assert {imp.top for imp in closure} >= {"celery", "redis"}
    needs_more = missing(closure, installed_by())
    assert not needs_more, needs_more


@pytest.mark.parametrize("extras", [(), ("api",), ("scheduler",), ("api", "scheduler", "flower")])
def test_api_and_scheduler_installs_bring_no_torch(extras):
    heavy = installed_by(*extras) & HEAVY
    assert not heavy, f"{extras} install {sorted(heavy)}"
    assert installed_by("worker") >= HEAVY


def test_all_is_every_extra_but_the_developer_and_gpu_ones():
    optional = PYPROJECT["project"]["optional-dependencies"]
    (everything,) = optional["all"]
    named = Requirement(everything)
    assert canonical(named.name) == "llmq"
    assert named.extras == set(optional) - {"all", "dev", "gpu"}


def test_the_repository_tracks_nothing_it_ignores():
    """No wheel, log or tool cache is committed: .gitignore names them, and none is tracked."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"*.whl", "*.log", "__pycache__/", ".pytest_cache/", ".ruff_cache/"} <= set(ignored)
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert not tracked, tracked
