"""Offline checks of infra/*.bicep: parse it (pycep-parser) and scan it (checkov).

Both tools live in their own venv, INFRA_VENV (``make infra-tools`` installs requirements-infra.txt
there): checkov pins packages that conflict with the app's. They run as subprocesses of that venv's
interpreter; this module only reads their JSON.

pycep's document is plain JSON: ``resources`` / ``variables`` / ``parameters`` / ``modules`` /
``outputs`` keyed by symbolic name. A reference such as ``hostStorage.name`` is
``{"operator": {"type": "property_accessor", "operands": {...}}}``; a bare name (``appSettings``)
may be a parameter, a variable or a literal string alike (pycep drops quotes).

main.bicep wires the modules in infra/modules/. ``load_deployment`` parses main.bicep and every
module it calls; ``Deployment.resolve`` follows a reference across them (a module parameter to the
argument of its call, a module output to its value, an ``existing`` resource to the resource
another module declares) down to a resource property, a main.bicep parameter or a value.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = PROJECT_ROOT / "infra"
MAIN_BICEP = INFRA_DIR / "main.bicep"
INFRA_VENV = PROJECT_ROOT / ".stack" / "infra-venv"
INFRA_REQUIREMENTS = PROJECT_ROOT / "requirements-infra.txt"

_PARSE_SCRIPT = """
import json, sys
from pathlib import Path
from pycep import BicepParser
parser = BicepParser()
print(json.dumps({name: parser.parse(file_path=Path(name)) for name in sys.argv[1:]}, default=str))
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


def parse_bicep_files(paths: list[Path]) -> dict[Path, dict[str, Any]]:
    """pycep-parser's JSON document of each Bicep file (one interpreter for all of them)."""
    completed = subprocess.run(
        [str(infra_tool("python")), "-c", _PARSE_SCRIPT, *(str(path) for path in paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_offline_env(),
    )
    if completed.returncode != 0:
        shown = ", ".join(_shown(path) for path in paths)
        raise AssertionError(f"pycep could not parse {shown}:\n{completed.stderr[-4000:]}")
    documents: dict[str, dict[str, Any]] = json.loads(completed.stdout)
    return {Path(name): document for name, document in documents.items()}


def parse_bicep(path: Path = MAIN_BICEP) -> dict[str, Any]:
    """pycep-parser's JSON document of one Bicep file."""
    return parse_bicep_files([path])[path]


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


# --- reading pycep's documents -----------------------------------------------------------------


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


def walk(node: Any) -> Iterator[Any]:
    """``node`` and every value nested in it (dict values and keys, list items)."""
    yield node
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


# Where a Bicep file is deployed: the symbolic names of the module calls leading to it from
# main.bicep; () is main.bicep itself.
ModulePath = tuple[str, ...]


def module_label(module: ModulePath) -> str:
    return "/".join(module) or "main"


class ResourceKey(NamedTuple):
    """A resource declaration: the module it is declared in and its symbolic name there."""

    module: ModulePath
    name: str

    def __str__(self) -> str:
        return f"{module_label(self.module)}:{self.name}"


@dataclass(frozen=True)
class ResourceRef:
    """A declared resource (not an ``existing`` one), or its property ``path``."""

    resource: ResourceKey
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParameterRef:
    """A main.bicep parameter, or its property ``path``."""

    name: str
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Value:
    """Anything else: a literal, or an expression (function call, operator) read in ``module``."""

    module: ModulePath
    node: Any


Resolved = ResourceRef | ParameterRef | Value

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _body(resource: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = resource["config"]
    while "config" in config and ("condition" in config or "loop_type" in config):
        config = config["config"]  # `if (...)` and `[for ...]` resources wrap the body
    return config


@dataclass(frozen=True)
class BicepFile:
    path: Path
    module: ModulePath
    document: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        """``parameters``, ``variables``, ``resources``, ``modules`` or ``outputs`` ({} when absent)."""
        section: dict[str, Any] = self.document.get(name) or {}
        return section


class Deployment:
    """main.bicep and every module it calls (each call once), parsed by pycep."""

    def __init__(self, files: dict[ModulePath, BicepFile]) -> None:
        self.files = files

    @property
    def root(self) -> BicepFile:
        return self.files[()]

    def arguments(self, module: ModulePath) -> dict[str, Any]:
        """The ``params`` the parent passes in the call of ``module``."""
        call = self.files[module[:-1]].section("modules")[module[-1]]
        arguments: dict[str, Any] = call["config"].get("params") or {}
        return arguments

    def resources(self, *, existing: bool = False) -> Iterator[tuple[ResourceKey, dict[str, Any]]]:
        """Every resource declaration (pycep's entry: type, existing, config); ``existing`` ones on request."""
        for module, file in self.files.items():
            for name, resource in file.section("resources").items():
                if existing or not resource.get("existing"):
                    yield ResourceKey(module, name), resource

    def resources_of_type(self, resource_type: str) -> dict[ResourceKey, dict[str, Any]]:
        """Key -> body of every declared (not ``existing``) resource of ``resource_type`` (case-insensitive)."""
        return {
            key: _body(resource)
            for key, resource in self.resources()
            if resource["type"].lower() == resource_type.lower()
        }

    def loop(self, key: ResourceKey) -> tuple[str, Any] | None:
        """(item name, array expression) of a ``[for item in array: ...]`` resource, else None."""
        config = self.files[key.module].section("resources")[key.name]["config"]
        loop = config.get("loop_type")
        if not loop:
            return None
        return loop["detail"]["item_name"], loop["detail"]["array_name"]

    def resolve(self, module: ModulePath, node: Any) -> Resolved:
        """What ``node``, read in ``module``, refers to, followed across modules (see the module docstring)."""
        path = accessor_path(node)
        return self._resolve_path(module, path, node) if path else Value(module, node)

    def interpolated(self, module: ModulePath, text: str) -> list[str | Resolved]:
        """An interpolated string as its literal parts (str) and its ``${...}`` parts, resolved."""
        parts: list[str | Resolved] = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            if match.start() > position:
                parts.append(text[position : match.start()])
            expression = match.group(1).strip()
            if _DOTTED_NAME.fullmatch(expression):
                parts.append(self._resolve_path(module, expression.split("."), expression))
            else:
                parts.append(Value(module, expression))
            position = match.end()
        if position < len(text):
            parts.append(text[position:])
        return parts

    def _resolve_path(self, module: ModulePath, path: list[str], node: Any) -> Resolved:
        file = self.files[module]
        head, rest = path[0], tuple(path[1:])
        where = f"{module_label(module)} ({file.path.name})"
        if head in file.section("parameters"):
            if not module:
                return ParameterRef(head, rest)
            arguments = self.arguments(module)
            if head in arguments:
                return self._extend(self.resolve(module[:-1], arguments[head]), rest)
            parameter = file.section("parameters")[head]
            if parameter.get("default") is None:  # pycep: "default": None when there is none
                raise AssertionError(f"{where}: the module call does not pass the required parameter {head}")
            return self._extend(self.resolve(module, parameter["default"]), rest)
        if head in file.section("variables"):
            return self._extend(self.resolve(module, file.section("variables")[head]["value"]), rest)
        if head in file.section("modules") and rest[:1] == ("outputs",) and len(rest) >= 2:
            child = (*module, head)
            outputs = self.files[child].section("outputs")
            if rest[1] not in outputs:
                raise AssertionError(f"{where}: module {head} has no output {rest[1]}")
            return self._extend(self.resolve(child, outputs[rest[1]]["value"]), rest[2:])
        if head in file.section("resources"):
            resource = file.section("resources")[head]
            if not resource.get("existing"):
                return ResourceRef(ResourceKey(module, head), rest)
            declared = self.resolve(module, _body(resource)["name"])
            if not (
                isinstance(declared, ResourceRef)
                and declared.path == ("name",)
                and self._type(declared.resource).lower() == resource["type"].lower()
            ):
                raise AssertionError(
                    f"{where}: the existing resource {head} is not named after a {resource['type']} "
                    f"this deployment declares: {declared}"
                )
            return ResourceRef(declared.resource, rest)
        return Value(module, node)

    def _type(self, key: ResourceKey) -> str:
        resource_type: str = self.files[key.module].section("resources")[key.name]["type"]
        return resource_type

    def _extend(self, resolved: Resolved, rest: tuple[str, ...]) -> Resolved:
        if not rest:
            return resolved
        if isinstance(resolved, ResourceRef):
            return ResourceRef(resolved.resource, resolved.path + rest)
        if isinstance(resolved, ParameterRef):
            return ParameterRef(resolved.name, resolved.path + rest)
        if isinstance(resolved.node, dict) and rest[0] in resolved.node:
            return self._extend(self.resolve(resolved.module, resolved.node[rest[0]]), rest[1:])
        raise AssertionError(f"cannot read .{'.'.join(rest)} of {resolved}")


def load_deployment(main: Path = MAIN_BICEP) -> Deployment:
    """``main`` and every module it calls (local modules only: this template has no registry modules)."""
    parsed = parse_bicep_files(sorted(main.parent.rglob("*.bicep")))
    documents = {path.resolve(): document for path, document in parsed.items()}
    files: dict[ModulePath, BicepFile] = {}

    def visit(path: Path, module: ModulePath) -> None:
        if path not in documents:
            raise AssertionError(f"{module_label(module)}: no Bicep file {path} under {main.parent}")
        files[module] = BicepFile(path, module, documents[path])
        for name, call in files[module].section("modules").items():
            if call.get("type") != "local":
                raise AssertionError(f"{path.name}: module {name} is not a local file: {call.get('detail')}")
            visit((path.parent / call["detail"]["path"]).resolve(), (*module, name))

    visit(main.resolve(), ())
    return Deployment(files)


@dataclass(frozen=True)
class AppSettings:
    """The app settings of a Function App: setting name -> value node, read in ``module``."""

    module: ModulePath
    nodes: dict[str, Any]


def app_settings(deployment: Deployment, site: ResourceKey) -> AppSettings:
    """The app settings of the Microsoft.Web/sites resource ``site``.

    Read from its ``Microsoft.Web/sites/config`` child named ``appsettings`` (``properties`` is the
    map, or a reference to it), else from ``siteConfig.appSettings`` (a list of {name, value} objects).
    """
    for key, config in deployment.resources_of_type("Microsoft.Web/sites/config").items():
        if key.module == site.module and config.get("parent") == site.name and config.get("name") == "appsettings":
            properties = deployment.resolve(site.module, config["properties"])
            if not (isinstance(properties, Value) and isinstance(properties.node, dict)):
                raise AssertionError(f"{site}/appsettings: properties is not a map: {properties}")
            return AppSettings(properties.module, properties.node)
    body = deployment.resources_of_type("Microsoft.Web/sites")[site]
    settings = body["properties"].get("siteConfig", {}).get("appSettings")
    if not isinstance(settings, list):
        raise AssertionError(f"{site}: no appsettings config resource and no siteConfig.appSettings list")
    return AppSettings(site.module, {entry["name"]: entry["value"] for entry in settings})


@dataclass(frozen=True)
class RoleAssignment:
    resource: ResourceKey  # the assignment
    scope: ResourceKey  # the resource it is scoped to (an `existing` scope resolved to its declaration)
    role_definition_id: str  # GUID of the role definition
    principal: Resolved  # principalId, e.g. ResourceRef(<identity>, ("properties", "principalId"))


def role_assignments(deployment: Deployment) -> Iterator[RoleAssignment]:
    for key, config in deployment.resources_of_type("Microsoft.Authorization/roleAssignments").items():
        definition = config["properties"]["roleDefinitionId"]
        function = definition.get("function", {}) if isinstance(definition, dict) else {}
        if function.get("type") != "subscription_resource_id":
            raise AssertionError(f"{key}: roleDefinitionId is not subscriptionResourceId(...): {definition}")
        role = deployment.resolve(key.module, function["parameters"]["resource_name_1"])
        if not (isinstance(role, Value) and isinstance(role.node, str)):
            raise AssertionError(f"{key}: cannot read the role definition id {role}")
        scope_node = config.get("scope")
        scope = deployment.resolve(key.module, scope_node) if isinstance(scope_node, str) else None
        if not (isinstance(scope, ResourceRef) and not scope.path):
            raise AssertionError(f"{key}: the assignment has no resource scope: {scope_node}")
        principal = deployment.resolve(key.module, config["properties"]["principalId"])
        yield RoleAssignment(key, scope.resource, role.node.lower(), principal)
