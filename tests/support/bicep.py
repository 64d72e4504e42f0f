"""Offline checks of infra/*.bicep: parse it (pycep-parser) and scan it (checkov).

Both tools live in their own venv, INFRA_VENV (``make infra-tools`` installs requirements-infra.txt
there): checkov pins packages that conflict with the app's. They run as subprocesses of that venv's
interpreter; this module only reads their JSON.

pycep's document is plain JSON: ``resources`` / ``variables`` / ``parameters`` keyed by symbolic
name, each with its ``config`` (resources) or ``value`` (variables). A reference such as
``hostStorage.name`` is ``{"operator": {"type": "property_accessor", "operands": {...}}}``; a bare
name (``appSettings``) may be a parameter, a variable or a literal string alike (pycep drops quotes).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = PROJECT_ROOT / "infra"
MAIN_BICEP = INFRA_DIR / "main.bicep"
INFRA_VENV = PROJECT_ROOT / ".stack" / "infra-venv"
INFRA_REQUIREMENTS = PROJECT_ROOT / "requirements-infra.txt"

_PARSE_SCRIPT = """
import json, sys
from pathlib import Path
from pycep import BicepParser
print(json.dumps(BicepParser().parse(file_path=Path(sys.argv[1])), default=str))
"""


class InfraToolsMissingError(RuntimeError):
    """The infra venv (checkov, pycep-parser) is not installed."""


def infra_tool(name: str) -> Path:
    """A program of the infra venv; InfraToolsMissingError naming the fix when it is not there."""
    path = INFRA_VENV / "bin" / name
    if not path.exists():
        raise InfraToolsMissingError(
            f"{_shown(path)} is missing: the infra checkers are not installed. Run `make infra-tools` "
            f"(installs {INFRA_REQUIREMENTS.name} into {_shown(INFRA_VENV)}; `make test` does it first)."
        )
    return path


def _shown(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BC_API_KEY", None)  # never talk to the Prisma Cloud platform
    env.pop("PRISMA_API_URL", None)
    return env


def parse_bicep(path: Path = MAIN_BICEP) -> dict[str, Any]:
    """pycep-parser's JSON document of one Bicep file."""
    completed = subprocess.run(
        [str(infra_tool("python")), "-c", _PARSE_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_offline_env(),
    )
    if completed.returncode != 0:
        raise AssertionError(f"pycep could not parse {path}:\n{completed.stderr[-4000:]}")
    document: dict[str, Any] = json.loads(completed.stdout)
    return document


@dataclass(frozen=True)
class CheckovReport:
    passed: int
    failed: int
    skipped: int
    parsing_errors: int
    failures: list[str]
    skips: list[str]


def run_checkov(directory: Path = INFRA_DIR) -> CheckovReport:
    """checkov's Bicep scan of ``directory``, offline (no platform download)."""
    completed = subprocess.run(
        [str(infra_tool("checkov")), "-d", str(directory), "--framework", "bicep", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_offline_env(),
        cwd=directory,
    )
    try:
        raw = json.loads(completed.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"checkov printed no JSON report (exit {completed.returncode}):\n{completed.stdout[-2000:]}\n"
            f"{completed.stderr[-4000:]}"
        ) from exc
    reports = raw if isinstance(raw, list) else [raw]
    if not reports or any(report.get("check_type") != "bicep" for report in reports):
        raise AssertionError(f"checkov scanned no Bicep: {completed.stdout[-2000:]}")
    summary: dict[str, int] = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}
    failures: list[str] = []
    skips: list[str] = []
    for report in reports:
        for key in summary:
            summary[key] += int(report["summary"].get(key, 0))
        results = report.get("results", {})
        failures += [
            f"{c['check_id']} {c['check_name']} - {c['resource']} ({c.get('file_path')}:{c.get('file_line_range')})"
            for c in results.get("failed_checks", [])
        ]
        skips += [
            f"{c['check_id']} {c['resource']}: {(c.get('check_result') or {}).get('suppress_comment', '')}"
            for c in results.get("skipped_checks", [])
        ]
    return CheckovReport(failures=failures, skips=skips, **summary)


# --- reading pycep's document ------------------------------------------------------------------


def accessor_path(node: Any) -> list[str]:
    """``a.b.c`` as ["a", "b", "c"]; [] for anything that is not a plain property access."""
    if isinstance(node, str):
        return [node]
    if not isinstance(node, dict) or set(node) != {"operator"}:
        return []
    operator = node["operator"]
    if operator.get("type") != "property_accessor":
        return []
    operands = operator["operands"]
    head, tail = accessor_path(operands["operand_1"]), accessor_path(operands["operand_2"])
    return head + tail if head and tail else []


def resources_of_type(document: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    """Symbolic name -> config of every resource of ``resource_type`` (case-insensitive)."""
    found = {}
    for name, resource in document["resources"].items():
        if resource["type"].lower() != resource_type.lower():
            continue
        config = resource["config"]
        while "config" in config and ("condition" in config or "loop_type" in config):
            config = config["config"]  # `if (...)` and `[for ...]` resources wrap the body
        found[name] = config
    return found


def app_settings(document: dict[str, Any], site_name: str) -> dict[str, Any]:
    """The app settings of the Microsoft.Web/sites resource ``site_name``: setting name -> value node.

    Read from its ``Microsoft.Web/sites/config`` child named ``appsettings`` (``properties`` is the
    map, or the name of a variable holding it), else from ``siteConfig.appSettings`` (a list of
    {name, value} objects).
    """
    for config in resources_of_type(document, "Microsoft.Web/sites/config").values():
        if config.get("parent") == site_name and config.get("name") == "appsettings":
            properties = config["properties"]
            if isinstance(properties, str) and properties in document["variables"]:
                properties = document["variables"][properties]["value"]
            if not isinstance(properties, dict):
                raise AssertionError(f"{site_name}/appsettings: properties is not a map: {properties}")
            return properties
    site = resources_of_type(document, "Microsoft.Web/sites")[site_name]
    settings = site["properties"].get("siteConfig", {}).get("appSettings")
    if not isinstance(settings, list):
        raise AssertionError(f"{site_name}: no appsettings config resource and no siteConfig.appSettings list")
    return {entry["name"]: entry["value"] for entry in settings}


@dataclass(frozen=True)
class RoleAssignment:
    resource: str  # symbolic name of the assignment
    scope: str  # symbolic name of the resource it is scoped to
    role_definition_id: str  # GUID of the role definition
    principal: list[str]  # accessor path of principalId, e.g. ["managedIdentity", "properties", "principalId"]


def role_assignments(document: dict[str, Any]) -> Iterator[RoleAssignment]:
    role_ids: dict[str, str] = document["variables"].get("roleIds", {}).get("value", {})
    for name, config in resources_of_type(document, "Microsoft.Authorization/roleAssignments").items():
        definition = config["properties"]["roleDefinitionId"]
        function = definition.get("function", {}) if isinstance(definition, dict) else {}
        if function.get("type") != "subscription_resource_id":
            raise AssertionError(f"{name}: roleDefinitionId is not subscriptionResourceId(...): {definition}")
        role = function["parameters"]["resource_name_1"]
        path = accessor_path(role)
        if len(path) == 2 and path[0] == "roleIds":
            role_guid = role_ids[path[1]]
        elif isinstance(role, str):
            role_guid = role
        else:
            raise AssertionError(f"{name}: cannot read the role definition id {role}")
        scope = config.get("scope")
        if not isinstance(scope, str):
            raise AssertionError(f"{name}: the assignment has no resource scope: {scope}")
        yield RoleAssignment(name, scope, role_guid.lower(), accessor_path(config["properties"]["principalId"]))
