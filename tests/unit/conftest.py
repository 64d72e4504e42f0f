"""Fixtures of the infra tests (test_infra*.py): the parsed deployment and the Function App's settings."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.bicep import (
    MAIN_BICEP,
    AppSettings,
    Deployment,
    InfraToolsMissingError,
    ResourceKey,
    app_settings,
    load_deployment,
)


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    try:
        return load_deployment(MAIN_BICEP)
    except InfraToolsMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def site_key(deployment: Deployment) -> ResourceKey:
    sites = deployment.resources_of_type("Microsoft.Web/sites")
    assert len(sites) == 1, f"one Function App expected, found {[str(key) for key in sites]}"
    return next(iter(sites))


@pytest.fixture(scope="module")
def site(deployment: Deployment, site_key: ResourceKey) -> dict[str, Any]:
    return deployment.resources_of_type("Microsoft.Web/sites")[site_key]


@pytest.fixture(scope="module")
def appsettings(deployment: Deployment, site_key: ResourceKey) -> AppSettings:
    return app_settings(deployment, site_key)


@pytest.fixture(scope="module")
def settings_nodes(appsettings: AppSettings) -> dict[str, Any]:
    return appsettings.nodes
