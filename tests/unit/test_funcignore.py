""".funcignore (gitignore semantics, via pathspec): drops the heavy and local-only paths and keeps
every file the app needs at run time."""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pathspec
import pytest

from tests.support.bicep import (
    PROJECT_ROOT,
)

RUNTIME_FILES = ("function_app.py", "host.json", "requirements.txt")
RUNTIME_PACKAGES = ("triggers", "controllers", "services", "repositories", "schemas")
# Inside the runtime packages but not run by the Function App: the operator CLI (HTTP client only).
NOT_RUNTIME = ("services/cli/",)
NOT_PUBLISHED = (
    ".venv/bin/python",
    ".venv/lib/python3.11/site-packages/x.py",
    "node_modules/azurite/package.json",
    "devstack/node/node_modules/npm/index.js",
    "devstack/__main__.py",
    ".stack/pg-test-1/postgresql.conf",
    ".stack/infra-venv/bin/checkov",
    "tests/unit/test_infra.py",
    "tests/fixtures/sample_app/function_app.py",
    "bench/throughput.py",
    "docs/deploy.md",
    "infra/main.bicep",
    "infra/modules/function-app.bicep",
    "local_host/__main__.py",
    ".git/HEAD",
    ".ci/run",
    "services/__pycache__/janitor.cpython-311.pyc",
    ".pytest_cache/README.md",
    ".mypy_cache/3.11/cache.db",
    ".ruff_cache/CACHEDIR.TAG",
    "local.settings.json",
    "local.settings.example.json",
    "README.md",
    "requirements-dev.txt",
    "requirements-infra.txt",
    "package.json",
    "package-lock.json",
    "Makefile",
    "pyproject.toml",
    "services/cli/main.py",
)


@pytest.fixture(scope="module")
def funcignore() -> pathspec.PathSpec:
    lines = (PROJECT_ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _runtime_files() -> Iterator[str]:
    yield from RUNTIME_FILES
    for package in RUNTIME_PACKAGES:
        for path in sorted((PROJECT_ROOT / package).rglob("*")):
            relative = path.relative_to(PROJECT_ROOT).as_posix()
            if (
                path.is_file()
                and "__pycache__" not in path.parts
                and path.suffix != ".pyc"
                and not relative.startswith(NOT_RUNTIME)
            ):
                yield relative


def test_funcignore_leaves_out_what_azure_does_not_run(funcignore: pathspec.PathSpec) -> None:
    published = [path for path in NOT_PUBLISHED if not funcignore.match_file(path)]
    assert not published, f".funcignore lets these into the package: {published}"


def test_funcignore_keeps_every_file_the_app_runs(funcignore: pathspec.PathSpec) -> None:
    runtime = list(_runtime_files())
    assert any(path.startswith("repositories/migrations/") and path.endswith(".sql") for path in runtime)
    assert any(path.startswith("repositories/sql/") for path in runtime)
    dropped = [path for path in runtime if funcignore.match_file(path)]
    assert not dropped, f".funcignore drops files the app needs at run time: {dropped}"


def test_the_published_code_imports_nothing_funcignore_drops(funcignore: pathspec.PathSpec) -> None:
    """Imports of the runtime packages resolve inside the package (devstack, local_host, tests, bench stay out)."""
    local_top_levels = {
        path.name for path in PROJECT_ROOT.iterdir() if path.is_dir() and (path / "__init__.py").exists()
    }
    offending = []
    for relative in _runtime_files():
        if not relative.endswith(".py"):
            continue
        tree = ast.parse((PROJECT_ROOT / relative).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in local_top_levels and funcignore.match_file(f"{top}/__init__.py"):
                    offending.append(f"{relative}: import {name}")
    assert not offending, "runtime code imports packages .funcignore leaves out:\n" + "\n".join(offending)
