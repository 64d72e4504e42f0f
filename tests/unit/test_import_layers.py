"""The import arrows point one way: triggers -> composition root -> engine <- job types -> domains.

Checked on the source (ast), so a lazy import inside a function counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        for module in sorted(imported_modules(path)):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{shown(path)} imports {module}")
    return found


def test_the_engine_imports_no_job_type_domain_or_edge() -> None:
    forbidden = (
        "controllers",
        "triggers",
        "function_app",
        "services.raster",
        "services.stac",
        "services.inventory",
        "services.vector",
        "services.container",
        "services.dashboard",
        "services.cli",
    )
    assert offenders(sources("services/engine"), forbidden) == []


@pytest.mark.parametrize("domain", ["services/raster", "services/stac", "services/inventory", "services/vector"])
def test_domain_libraries_import_neither_engine_nor_job_types(domain: str) -> None:
    forbidden = ("services.engine", "controllers", "triggers", "services.container")
    assert offenders(sources(domain), forbidden) == []


def test_job_types_use_only_the_engine_contract() -> None:
    """Controllers import ``services.engine`` (the contract) and nothing deeper of the engine."""
    found = []
    for path in sources("controllers"):
        for module in imported_modules(path):
            if module.startswith("services.engine.") and module.split(".")[2] not in {
                "JobController",
                "JobOutcome",
                "JobTypeRegistry",
                "RetryPolicy",
                "StageDefinition",
                "StageResults",
                "TaskContext",
                "TaskHandler",
                "TaskSpec",
            }:
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    assert found == []


def test_the_cli_imports_nothing_of_the_app() -> None:
    forbidden = ("services.engine", "controllers", "repositories", "triggers", "services.container")
    assert offenders(sources("services/cli"), forbidden) == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from controllers.registry import default_registry\n")
    assert offenders([bad], ("controllers",)) == [
        f"{bad} imports controllers.registry",
        f"{bad} imports controllers.registry.default_registry",
    ]
