"""infra/*.bicep (main.bicep and the modules it wires) and .funcignore, checked offline.

- checkov (from the infra venv, `make infra-tools`) finds no failed check in infra/; every skip is
  annotated in the Bicep with its reason.
- The Bicep, parsed with pycep-parser and followed across modules (tests/support/bicep.py): every
  module call passes the module's parameters; every app setting the code reads (schemas.settings)
  is set on the Function App, bar a short explicit list; the app identity holds exactly the roles
  the code and the Functions host need, each on the right resource; both storage accounts refuse
  shared keys; the Key Vault uses RBAC; the connection budget holds for the default parameters.
- .funcignore (gitignore semantics, via pathspec) drops the heavy and local-only paths and keeps
  every file the app needs at run time.

A missing infra venv fails these tests (with the command that installs it), never skips them.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pathspec
import pytest

from schemas.settings import Settings, setting_env_names
from tests.support.bicep import (
    INFRA_DIR,
    MAIN_BICEP,
    PROJECT_ROOT,
    AppSettings,
    Deployment,
    InfraToolsMissingError,
    ParameterRef,
    ResourceKey,
    ResourceRef,
    Value,
    accessor_path,
    app_settings,
    load_deployment,
    role_assignments,
    run_checkov,
    walk,
)

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

ROLE = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}

# Azure reserves these out of a Flexible Server's max_connections (replication, monitoring).
AZURE_RESERVED_CONNECTIONS = 15


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


def _target(deployment: Deployment, appsettings: AppSettings, name: str) -> ResourceKey:
    """The resource an app setting is read from (the host account for its name, wherever it is declared)."""
    resolved = deployment.resolve(appsettings.module, appsettings.nodes[name])
    assert isinstance(resolved, ResourceRef), f"{name} is not a reference to a resource property: {resolved}"
    return resolved.resource


def _default(deployment: Deployment, parameter: str) -> Any:
    return deployment.root.section("parameters")[parameter]["default"]


def _default_of(deployment: Deployment, module: tuple[str, ...], node: Any) -> Any:
    """The default of the main.bicep parameter that ``node`` (read in ``module``) comes from."""
    resolved = deployment.resolve(module, node)
    assert isinstance(resolved, ParameterRef) and not resolved.path, f"{node} is not a main.bicep parameter"
    return _default(deployment, resolved.name)


# --- checkov -------------------------------------------------------------------------------------


def test_checkov_finds_no_failed_check() -> None:
    try:
        report = run_checkov(INFRA_DIR)
    except InfraToolsMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"checkov: passed {report.passed}, failed {report.failed}, skipped {report.skipped}")
    for line in report.skips:
        print(f"  skipped: {line}")
    assert report.parsing_errors == 0, "checkov could not parse a Bicep file in infra/"
    assert report.failed == 0, "checkov failed checks:\n" + "\n".join(report.failures)
    assert report.passed > 0, "checkov ran no check on infra/"


def test_every_checkov_skip_gives_its_reason() -> None:
    annotated = 0
    for path in INFRA_DIR.rglob("*.bicep"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "checkov:skip" not in line:
                continue
            annotated += 1
            match = re.search(r"checkov:skip=(CKV2?_[A-Z]+_\d+):\s*(\S.{19,})", line)
            assert match, f"{path.name}:{number}: a skip needs `CKV_..: <reason of 20+ characters>`: {line.strip()}"
    assert annotated > 0


# --- module wiring -------------------------------------------------------------------------------


def test_every_module_call_passes_the_module_parameters_and_reads_existing_outputs(deployment: Deployment) -> None:
    assert len(deployment.files) > 1, "main.bicep calls no module"
    for module, file in deployment.files.items():
        if module:
            parameters = file.section("parameters")
            arguments = deployment.arguments(module)
            unknown = sorted(set(arguments) - set(parameters))
            required = {name for name, parameter in parameters.items() if parameter.get("default") is None}
            missing = sorted(required - set(arguments))
            assert not unknown, f"the call of {file.path.name} passes parameters it does not declare: {unknown}"
            assert not missing, f"the call of {file.path.name} lacks required parameters: {missing}"
        read = set()
        for node in walk(file.document):
            path = accessor_path(node) if isinstance(node, dict) else []
            if len(path) >= 3 and path[1] == "outputs":
                read.add((path[0], path[2]))
            if isinstance(node, str):
                read |= set(re.findall(r"\b(\w+)\.outputs\.(\w+)", node))
        for name, output in sorted(read):
            child = (*module, name)
            assert child in deployment.files, f"{file.path.name}: {name} is not a module"
            assert output in deployment.files[child].section("outputs"), f"{file.path.name}: {name} has no {output}"


# --- app settings --------------------------------------------------------------------------------


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
    assert _default(deployment, "postgresPgBouncer") is False
    sku = _default(deployment, "postgresSkuName")
    table = deployment.root.section("variables")["postgresDefaultMaxConnections"]["value"]
    max_connections = _default(deployment, "postgresMaxConnections") or table[sku]
    reserved = AZURE_RESERVED_CONNECTIONS + _default(deployment, "postgresAdminReservedConnections")
    instances = _default(deployment, "maximumInstanceCount")
    pool = min(_default(deployment, "dbPoolMaxSizeCap"), (max_connections - reserved) // instances)
    return {
        "POSTGRES_MAX_CONNECTIONS": max_connections,
        "POSTGRES_RESERVED_CONNECTIONS": reserved,
        "APP_MAX_INSTANCES": instances,
        "DB_POOL_MAX_SIZE": pool,
        "DB_POOL_MIN_SIZE": min(_default(deployment, "dbPoolMinSize"), pool),
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


def test_the_app_identity_holds_exactly_the_roles_it_needs(
    deployment: Deployment, site_key: ResourceKey, site: dict[str, Any], appsettings: AppSettings
) -> None:
    identities = list(site["identity"]["userAssignedIdentities"])
    assert site["identity"]["type"] == "UserAssigned" and len(identities) == 1
    reference = deployment.interpolated(site_key.module, identities[0].strip("'"))
    assert len(reference) == 1 and isinstance(reference[0], ResourceRef), f"unexpected identity {identities[0]}"
    assert reference[0].path == ("id",), f"unexpected identity reference {identities[0]}"
    identity = reference[0].resource
    assert identity in deployment.resources_of_type("Microsoft.ManagedIdentity/userAssignedIdentities")
    assert _target(deployment, appsettings, "AZURE_CLIENT_ID") == identity
    assert _target(deployment, appsettings, "AzureWebJobsStorage__clientId") == identity

    host = _target(deployment, appsettings, "AzureWebJobsStorage__accountName")
    data = _target(deployment, appsettings, "DATA_STORAGE__accountName")
    vault = _target(deployment, appsettings, "KEY_VAULT_URL")
    insights = _target(deployment, appsettings, "APPLICATIONINSIGHTS_CONNECTION_STRING")
    accounts = deployment.resources_of_type("Microsoft.Storage/storageAccounts")
    assert host in accounts and data in accounts and host != data
    assert vault in deployment.resources_of_type("Microsoft.KeyVault/vaults")
    assert insights in deployment.resources_of_type("Microsoft.Insights/components")

    assigned = set()
    for assignment in role_assignments(deployment):
        assert assignment.principal == ResourceRef(identity, ("properties", "principalId")), assignment
        assert assignment.role_definition_id in ROLE, f"{assignment.resource}: unknown role"
        assigned.add((assignment.scope, ROLE[assignment.role_definition_id]))
    expected = {
        (host, "Storage Blob Data Owner"),  # host keys, leases, timers, the Flex deployment package
        (host, "Storage Queue Data Contributor"),  # queue triggers, -poison queues, the app's sends
        (host, "Storage Table Data Contributor"),  # the host's diagnostic events table
        (data, "Storage Blob Data Contributor"),  # bronze reads (also GDAL /vsiaz/), silver writes
        (vault, "Key Vault Secrets User"),  # POSTGRES_PASSWORD_SECRET_NAME
        (insights, "Monitoring Metrics Publisher"),  # telemetry with an Entra token (local auth off)
    }
    assert assigned == expected


def test_storage_accounts_refuse_shared_keys_and_public_blobs(deployment: Deployment) -> None:
    accounts = deployment.resources_of_type("Microsoft.Storage/storageAccounts")
    assert len(accounts) == 2
    for key, account in accounts.items():
        properties = account["properties"]
        assert properties["allowSharedKeyAccess"] is False, key
        assert properties["allowBlobPublicAccess"] is False, key
        assert properties["supportsHttpsTrafficOnly"] is True, key
        assert properties["minimumTlsVersion"] == "TLS1_2", key
    for key, container in deployment.resources_of_type(
        "Microsoft.Storage/storageAccounts/blobServices/containers"
    ).items():
        assert container["properties"]["publicAccess"] == "None", key


def test_key_vault_uses_rbac_soft_delete_and_purge_protection(deployment: Deployment) -> None:
    (vault,) = deployment.resources_of_type("Microsoft.KeyVault/vaults").values()
    properties = vault["properties"]
    assert properties["enableRbacAuthorization"] is True
    assert properties["enableSoftDelete"] is True
    assert properties["enablePurgeProtection"] is True
    assert "accessPolicies" not in properties


def test_application_insights_is_workspace_based_with_entra_ingestion(
    deployment: Deployment, appsettings: AppSettings
) -> None:
    ((key, insights),) = deployment.resources_of_type("Microsoft.Insights/components").items()
    workspace = deployment.resolve(key.module, insights["properties"]["WorkspaceResourceId"])
    assert isinstance(workspace, ResourceRef) and workspace.path == ("id",), workspace
    assert workspace.resource in deployment.resources_of_type("Microsoft.OperationalInsights/workspaces")
    assert insights["properties"]["DisableLocalAuth"] is True
    authentication = appsettings.nodes["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    assert "Authorization=AAD" in authentication
    identity = _target(deployment, appsettings, "AZURE_CLIENT_ID")
    assert ResourceRef(identity, ("properties", "clientId")) in deployment.interpolated(
        appsettings.module, authentication
    )


# --- Function App, Postgres, queues --------------------------------------------------------------


def test_the_function_app_runs_python_311_on_flex_consumption(
    deployment: Deployment, site_key: ResourceKey, site: dict[str, Any], appsettings: AppSettings
) -> None:
    (plan,) = deployment.resources_of_type("Microsoft.Web/serverfarms").values()
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"]["name"] == "python"
    assert _default_of(deployment, site_key.module, config["runtime"]["version"]) == "3.11"
    assert _default_of(deployment, site_key.module, config["scaleAndConcurrency"]["instanceMemoryMB"]) == 4096
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    # The package container: <host account blob endpoint><a container of the host account>.
    host = _target(deployment, appsettings, "AzureWebJobsStorage__accountName")
    endpoint, container = deployment.interpolated(site_key.module, storage["value"])
    assert endpoint == ResourceRef(host, ("properties", "primaryEndpoints", "blob")), endpoint
    host_containers = [
        deployment.resolve(key.module, body["name"])
        for key, body in deployment.resources_of_type(
            "Microsoft.Storage/storageAccounts/blobServices/containers"
        ).items()
        if deployment.resolve(key.module, body["parent"]) in _blob_services_of(deployment, host)
    ]
    assert container in host_containers, f"{container} is not a container of {host}"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    identity = _target(deployment, appsettings, "AZURE_CLIENT_ID")
    assert deployment.resolve(site_key.module, storage["authentication"]["userAssignedIdentityResourceId"]) == (
        ResourceRef(identity, ("id",))
    )
    assert site["properties"]["httpsOnly"] is True


def _blob_services_of(deployment: Deployment, account: ResourceKey) -> list[ResourceRef]:
    return [
        ResourceRef(key)
        for key, body in deployment.resources_of_type("Microsoft.Storage/storageAccounts/blobServices").items()
        if deployment.resolve(key.module, body["parent"]) == ResourceRef(account)
    ]


def test_postgres_uses_entra_auth_tls_and_allows_postgis(
    deployment: Deployment, settings_nodes: dict[str, Any]
) -> None:
    (server,) = deployment.resources_of_type("Microsoft.DBforPostgreSQL/flexibleServers").values()
    assert server["properties"]["authConfig"]["activeDirectoryAuth"] == "Enabled"
    assert deployment.resources_of_type("Microsoft.DBforPostgreSQL/flexibleServers/administrators")
    parameters = {
        config["name"]: config["properties"]["value"]
        for config in deployment.resources_of_type("Microsoft.DBforPostgreSQL/flexibleServers/configurations").values()
    }
    assert "POSTGIS" in parameters["azure.extensions"].split(",")
    assert parameters["require_secure_transport"] == "ON"
    assert "max_connections" in parameters
    assert settings_nodes["POSTGRES_SSLMODE"] == "require"
    assert _default(deployment, "postgresAuth") == "entra"


def test_every_queue_the_triggers_bind_is_created(deployment: Deployment, appsettings: AppSettings) -> None:
    created: set[tuple[str, str]] = set()  # (main.bicep parameter, suffix)
    queues = deployment.resources_of_type("Microsoft.Storage/storageAccounts/queueServices/queues")
    for key, body in queues.items():
        loop = deployment.loop(key)
        assert loop and body["name"] == loop[0], f"{key}: expected one queue per item of a list"
        names = deployment.resolve(key.module, loop[1])
        assert isinstance(names, Value) and isinstance(names.node, list), names
        for name in names.node:
            parts = (
                deployment.interpolated(names.module, name)
                if "${" in name
                else [deployment.resolve(names.module, name)]
            )
            assert isinstance(parts[0], ParameterRef) and all(isinstance(part, str) for part in parts[1:]), name
            created.add((parts[0].name, "".join(str(part) for part in parts[1:])))
    for setting in ("JOB_QUEUE", "TASK_QUEUE", "HIGH_PRIORITY_TASK_QUEUE", "WEBHOOK_QUEUE"):
        parameter = deployment.resolve(appsettings.module, appsettings.nodes[setting])
        assert isinstance(parameter, ParameterRef), f"{setting} should come from a main.bicep parameter"
        assert {(parameter.name, ""), (parameter.name, "-poison")} <= created, setting


def test_the_parameters_file_matches_the_template(deployment: Deployment) -> None:
    document = json.loads((INFRA_DIR / "main.parameters.json").read_text(encoding="utf-8"))
    assert document["$schema"].endswith("/deploymentParameters.json#")
    given = set(document["parameters"])
    template = deployment.root.section("parameters")
    unknown = given - set(template)
    assert not unknown, f"main.parameters.json sets parameters main.bicep does not have: {sorted(unknown)}"
    required = {name for name, parameter in template.items() if parameter.get("default") is None}
    assert required <= given, f"main.parameters.json lacks required parameters: {sorted(required - given)}"


# --- .funcignore ---------------------------------------------------------------------------------

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


def test_bicep_files_exist() -> None:
    assert MAIN_BICEP.is_file()
    assert Path(INFRA_DIR / "main.parameters.json").is_file()
