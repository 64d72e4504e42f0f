"""Small lookups over a parsed Bicep deployment that several infra tests share."""

from __future__ import annotations

from typing import Any

from tests.support.bicep import AppSettings, Deployment, ParameterRef, ResourceKey, ResourceRef


def setting_target(deployment: Deployment, appsettings: AppSettings, name: str) -> ResourceKey:
    """The resource an app setting is read from (the host account for its name, wherever it is declared)."""
    resolved = deployment.resolve(appsettings.module, appsettings.nodes[name])
    assert isinstance(resolved, ResourceRef), f"{name} is not a reference to a resource property: {resolved}"
    return resolved.resource


def parameter_default(deployment: Deployment, parameter: str) -> Any:
    return deployment.root.section("parameters")[parameter]["default"]


def default_of(deployment: Deployment, module: tuple[str, ...], node: Any) -> Any:
    """The default of the main.bicep parameter that ``node`` (read in ``module``) comes from."""
    resolved = deployment.resolve(module, node)
    assert isinstance(resolved, ParameterRef) and not resolved.path, f"{node} is not a main.bicep parameter"
    return parameter_default(deployment, resolved.name)
