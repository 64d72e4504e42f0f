"""The Function App's app settings in infra/*.bicep against schemas.settings, checked offline: every
setting the code reads is set (bar a short explicit list), nothing unknown or forbidden is, the
default deployment's values are valid Settings, and the connection budget holds for its defaults.
Fixtures: tests/unit/conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.settings import Settings, setting_env_names
from tests.support.bicep import (
    AppSettings,
    Deployment,
    ParameterRef,
    ResourceKey,
    Value,
    accessor_path,
)
from tests.support.bicep_lookup import parameter_default

# Settings the code can read that are deliberately NOT set on the Function App, with the reason.
NOT_SET_IN_AZURE = {
    "AzureWebJobsStorage": "a connection string (Azurite); Azure uses identity-based AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__queueServiceUri": "alternative to AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__blobServiceUri": "alternative to AzureWebJobsStorage__accountName",
    "DATA_STORAGE": "a connection string (Azurite); Azure uses identity-based DATA_STORAGE__accountName",
    "DATA_STORAGE__blobServiceUri": "alternative to DATA_STORAGE__accountName",
    "POSTGRES_PASSWORD": "never an app setting: an Entra token, or the Key Vault secret POSTGRES_PASSWORD_SECRET_NAME",
    "POSTGRES_ENTRA_SCOPE": "its default is the Azure public cloud scope, right for this deployment",
    "WEBSITE_SITE_NAME": "set by the platform to the Function App's name",
    "WEBHOOK_SECRET": "never an app setting: a secret; Azure uses the Key Vault secret WEBHOOK_SECRET_NAME",
}
# Set on the Function App for the Functions host or the platform, not read by schemas.settings.
HOST_SETTINGS = {
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    # read by the exporter itself (Entra ingestion); APPLICATIONINSIGHTS_CONNECTION_STRING is in Settings
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# Flex Consumption rejects or ignores these (functionAppConfig replaces them); secrets never go in.
FORBIDDEN_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "AzureWebJobsStorage",
    "DATA_STORAGE",
    "POSTGRES_PASSWORD",
}

# Azure reserves these out of a Flexible Server's max_connections (replication, monitoring).
AZURE_RESERVED_CONNECTIONS = 15


def test_every_setting_the_code_reads_is_set_on_the_function_app(settings_nodes: dict[str, Any]) -> None:
    read_by_code = set(setting_env_names().values())
    assert set(NOT_SET_IN_AZURE) <= read_by_code, "an exemption names a setting the code no longer reads"
    missing = sorted(read_by_code - set(NOT_SET_IN_AZURE) - set(settings_nodes))
    assert not missing, f"app settings the code reads but the Bicep does not set: {missing}"


def test_the_function_app_sets_no_unknown_or_forbidden_setting(settings_nodes: dict[str, Any]) -> None:
    known = set(setting_env_names().values()) | HOST_SETTINGS
    assert not sorted(set(settings_nodes) - known), "app settings nothing reads (typo?)"
    assert not sorted(set(settings_nodes) & FORBIDDEN_SETTINGS), "settings Flex Consumption forbids, or secrets"


def _resolve(deployment: Deployment, module: tuple[str, ...], node: Any) -> str | None:
    """An app setting value as text, when it is a literal, a parameter default or a variable; else None."""
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, int):
        return str(node)
    if isinstance(node, dict) and node.get("function", {}).get("type") == "string":
        return _resolve(deployment, module, node["function"]["parameters"]["value_to_convert"])
    resolved = deployment.resolve(module, node)
    if isinstance(resolved, ParameterRef):
        default = deployment.root.section("parameters")[resolved.name].get("default")
        if resolved.path or default is None or isinstance(default, dict):
            return None
        return _resolve(deployment, (), default)
    if isinstance(resolved, Value):
        if isinstance(resolved.node, str):
            return resolved.node
        return None if resolved.node == node else _resolve(deployment, resolved.module, resolved.node)
    return None


def _budget_defaults(deployment: Deployment) -> dict[str, int]:
    """The connection budget main.bicep computes for its default parameters (no PgBouncer)."""
    assert parameter_default(deployment, "postgresPgBouncer") is False
    sku = parameter_default(deployment, "postgresSkuName")
    table = deployment.root.section("variables")["postgresDefaultMaxConnections"]["value"]
    max_connections = parameter_default(deployment, "postgresMaxConnections") or table[sku]
    reserved = AZURE_RESERVED_CONNECTIONS + parameter_default(deployment, "postgresAdminReservedConnections")
    instances = parameter_default(deployment, "maximumInstanceCount")
    pool = min(parameter_default(deployment, "dbPoolMaxSizeCap"), (max_connections - reserved) // instances)
    return {
        "POSTGRES_MAX_CONNECTIONS": max_connections,
        "POSTGRES_RESERVED_CONNECTIONS": reserved,
        "APP_MAX_INSTANCES": instances,
        "DB_POOL_MAX_SIZE": pool,
        "DB_POOL_MIN_SIZE": min(parameter_default(deployment, "dbPoolMinSize"), pool),
    }


def test_the_app_settings_of_the_default_deployment_are_valid_settings(
    deployment: Deployment, appsettings: AppSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the template sets, with stand-ins for values only Azure knows, is accepted by Settings."""
    known_in_azure = {
        "AzureWebJobsStorage__accountName": "geoetlhostaccount",
        "AzureWebJobsStorage__clientId": "11111111-1111-1111-1111-111111111111",
        "DATA_STORAGE__accountName": "geoetldataaccount",
        "AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        "POSTGRES_HOST": "geoetl-pg.postgres.database.azure.com",
        "POSTGRES_USER": "geoetl-app-id",
        "KEY_VAULT_URL": "https://geoetl-kv.vault.azure.net/",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=11111111-1111-1111-1111-111111111111;Authorization=AAD",
        # Conditionals, for the default parameters (postgresAuth entra, postgresPgBouncer false).
        "POSTGRES_PORT": "5432",
        "POSTGRES_PGBOUNCER": "false",
        "POSTGRES_PASSWORD_SECRET_NAME": "",
    } | {name: str(value) for name, value in _budget_defaults(deployment).items()}
    environment: dict[str, str] = {}
    unresolved = []
    for name, node in appsettings.nodes.items():
        value = known_in_azure.get(name, _resolve(deployment, appsettings.module, node))
        if value is None:
            unresolved.append(name)
        else:
            environment[name] = value
    assert not unresolved, f"add a stand-in value for these expression-valued settings: {unresolved}"
    for name in set(setting_env_names().values()):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.storage_account_name == "geoetlhostaccount"
    assert settings.data_storage_account_name == "geoetldataaccount"
    assert not settings.storage_connection_string.get_secret_value()
    assert settings.postgres_auth == "entra"
    assert settings.postgres_sslmode == "require"
    assert settings.postgres_password_secret_name is None
    assert settings.readable_containers == ("bronze",)
    assert settings.writable_containers == ("silver",)


def test_the_connection_budget_is_derived_from_the_sku_and_the_instance_limit(
    deployment: Deployment, site_key: ResourceKey, site: dict[str, Any], appsettings: AppSettings
) -> None:
    budget = _budget_defaults(deployment)
    assert budget["DB_POOL_MAX_SIZE"] >= 1
    assert budget["DB_POOL_MAX_SIZE"] * budget["APP_MAX_INSTANCES"] <= (
        budget["POSTGRES_MAX_CONNECTIONS"] - budget["POSTGRES_RESERVED_CONNECTIONS"]
    )
    # Each budget setting is the connection-budget module's output (its @minValue(1) guard), passed
    # down to the module that sets it.
    module_name = "connectionBudget"
    modules = deployment.root.section("modules")
    assert module_name in modules
    outputs = {
        "POSTGRES_MAX_CONNECTIONS": "clientConnectionLimit",
        "POSTGRES_RESERVED_CONNECTIONS": "reservedConnections",
        "APP_MAX_INSTANCES": "appMaxInstances",
        "DB_POOL_MAX_SIZE": "dbPoolMaxSize",
        "DB_POOL_MIN_SIZE": "dbPoolMinSize",
    }
    assert set(outputs) == set(budget)
    for name, output in outputs.items():
        module, node = appsettings.module, appsettings.nodes[name]["function"]["parameters"]["value_to_convert"]
        while module and isinstance(node, str) and node in deployment.files[module].section("parameters"):
            module, node = module[:-1], deployment.arguments(module)[node]  # up to the caller's argument
        path = accessor_path(node)
        assert (module, path) == ((), [module_name, "outputs", output]), f"{name} must be {module_name} {output}"
    # The instance limit the budget divides by is the one Flex Consumption enforces.
    scale = site["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    instance_limit = deployment.resolve(site_key.module, scale["maximumInstanceCount"])
    budget_argument = deployment.resolve((), modules[module_name]["config"]["params"]["maximumInstanceCount"])
    assert instance_limit == budget_argument == ParameterRef("maximumInstanceCount")
    assert modules[module_name]["detail"]["path"] == "modules/connection-budget.bicep"
    budget_module = deployment.files[(module_name,)].document
    decorators = {d["type"]: d["argument"] for d in budget_module["parameters"]["dbPoolMaxSize"]["decorators"]}
    assert decorators.get("min_value") == 1


# --- identity and roles --------------------------------------------------------------------------
