"""infra/main.bicep and .funcignore, checked offline.

- checkov (from the infra venv, `make infra-tools`) finds no failed check in infra/; every skip is
  annotated in the Bicep with its reason.
- The Bicep, parsed with pycep-parser: every app setting the code reads (schemas.settings) is set
  on the Function App, bar a short explicit list; the app identity holds exactly the roles the code
  and the Functions host need, each on the right resource; both storage accounts refuse shared keys;
  the Key Vault uses RBAC; the connection budget holds for the default parameters.
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
    InfraToolsMissingError,
    accessor_path,
    app_settings,
    parse_bicep,
    resources_of_type,
    role_assignments,
    run_checkov,
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
}
# Set on the Function App for the Functions host or the platform, not read by schemas.settings.
HOST_SETTINGS = {
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
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
def bicep() -> dict[str, Any]:
    try:
        return parse_bicep(MAIN_BICEP)
    except InfraToolsMissingError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def site_name(bicep: dict[str, Any]) -> str:
    sites = resources_of_type(bicep, "Microsoft.Web/sites")
    assert len(sites) == 1, f"one Function App expected, found {sorted(sites)}"
    return next(iter(sites))


@pytest.fixture(scope="module")
def site(bicep: dict[str, Any], site_name: str) -> dict[str, Any]:
    return resources_of_type(bicep, "Microsoft.Web/sites")[site_name]


@pytest.fixture(scope="module")
def settings_nodes(bicep: dict[str, Any], site_name: str) -> dict[str, Any]:
    return app_settings(bicep, site_name)


def _target(settings_nodes: dict[str, Any], name: str) -> str:
    """The symbolic resource name an app setting is read from (``hostStorage`` for hostStorage.name)."""
    path = accessor_path(settings_nodes[name])
    assert path, f"{name} is not a reference to a resource property: {settings_nodes[name]}"
    return path[0]


def _default(bicep: dict[str, Any], parameter: str) -> Any:
    return bicep["parameters"][parameter]["default"]


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


# --- app settings --------------------------------------------------------------------------------


def test_every_setting_the_code_reads_is_set_on_the_function_app(settings_nodes: dict[str, Any]) -> None:
    read_by_code = set(setting_env_names().values())
    assert set(NOT_SET_IN_AZURE) <= read_by_code, "an exemption names a setting the code no longer reads"
    missing = sorted(read_by_code - set(NOT_SET_IN_AZURE) - set(settings_nodes))
    assert not missing, f"app settings the code reads but main.bicep does not set: {missing}"


def test_the_function_app_sets_no_unknown_or_forbidden_setting(settings_nodes: dict[str, Any]) -> None:
    known = set(setting_env_names().values()) | HOST_SETTINGS
    assert not sorted(set(settings_nodes) - known), "app settings nothing reads (typo?)"
    assert not sorted(set(settings_nodes) & FORBIDDEN_SETTINGS), "settings Flex Consumption forbids, or secrets"


def _resolve(bicep: dict[str, Any], node: Any) -> str | None:
    """An app setting value as text, when it is a literal, a parameter default or a variable; else None."""
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, int):
        return str(node)
    if isinstance(node, str):
        if node in bicep["parameters"]:
            default = bicep["parameters"][node].get("default")
            return None if default is None or isinstance(default, dict) else _resolve(bicep, default)
        if node in bicep["variables"]:
            return _resolve(bicep, bicep["variables"][node]["value"])
        return node
    if isinstance(node, dict) and node.get("function", {}).get("type") == "string":
        return _resolve(bicep, node["function"]["parameters"]["value_to_convert"])
    return None


def _budget_defaults(bicep: dict[str, Any]) -> dict[str, int]:
    """The connection budget main.bicep computes for its default parameters (no PgBouncer)."""
    assert _default(bicep, "postgresPgBouncer") is False
    sku = _default(bicep, "postgresSkuName")
    table = bicep["variables"]["postgresDefaultMaxConnections"]["value"]
    max_connections = _default(bicep, "postgresMaxConnections") or table[sku]
    reserved = AZURE_RESERVED_CONNECTIONS + _default(bicep, "postgresAdminReservedConnections")
    instances = _default(bicep, "maximumInstanceCount")
    pool = min(_default(bicep, "dbPoolMaxSizeCap"), (max_connections - reserved) // instances)
    return {
        "POSTGRES_MAX_CONNECTIONS": max_connections,
        "POSTGRES_RESERVED_CONNECTIONS": reserved,
        "APP_MAX_INSTANCES": instances,
        "DB_POOL_MAX_SIZE": pool,
        "DB_POOL_MIN_SIZE": min(_default(bicep, "dbPoolMinSize"), pool),
    }


def test_the_app_settings_of_the_default_deployment_are_valid_settings(
    bicep: dict[str, Any], settings_nodes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
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
    } | {name: str(value) for name, value in _budget_defaults(bicep).items()}
    environment: dict[str, str] = {}
    unresolved = []
    for name, node in settings_nodes.items():
        value = known_in_azure.get(name, _resolve(bicep, node))
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
    bicep: dict[str, Any], site: dict[str, Any], settings_nodes: dict[str, Any]
) -> None:
    budget = _budget_defaults(bicep)
    assert budget["DB_POOL_MAX_SIZE"] >= 1
    assert budget["DB_POOL_MAX_SIZE"] * budget["APP_MAX_INSTANCES"] <= (
        budget["POSTGRES_MAX_CONNECTIONS"] - budget["POSTGRES_RESERVED_CONNECTIONS"]
    )
    # Each budget setting is the connection-budget module's output (its @minValue(1) guard).
    module_name = "connectionBudget"
    assert module_name in bicep["modules"]
    for name in budget:
        path = accessor_path(settings_nodes[name]["function"]["parameters"]["value_to_convert"])
        assert path[:2] == [module_name, "outputs"], f"{name} must be a connectionBudget output: {path}"
    # The instance limit the budget divides by is the one Flex Consumption enforces.
    scale = site["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    module_params = bicep["modules"][module_name]["config"]["params"]
    assert scale["maximumInstanceCount"] == module_params["maximumInstanceCount"] == "maximumInstanceCount"
    assert bicep["modules"][module_name]["detail"]["path"] == "modules/connection-budget.bicep"
    module = parse_bicep(INFRA_DIR / "modules" / "connection-budget.bicep")
    decorators = {d["type"]: d["argument"] for d in module["parameters"]["dbPoolMaxSize"]["decorators"]}
    assert decorators.get("min_value") == 1


# --- identity and roles --------------------------------------------------------------------------


def test_the_app_identity_holds_exactly_the_roles_it_needs(
    bicep: dict[str, Any], site: dict[str, Any], settings_nodes: dict[str, Any]
) -> None:
    identities = list(site["identity"]["userAssignedIdentities"])
    assert site["identity"]["type"] == "UserAssigned" and len(identities) == 1
    identity = re.fullmatch(r"'\$\{(\w+)\.id\}'", identities[0])
    assert identity, f"unexpected identity reference {identities[0]}"
    identity_name = identity.group(1)
    assert _target(settings_nodes, "AZURE_CLIENT_ID") == identity_name
    assert _target(settings_nodes, "AzureWebJobsStorage__clientId") == identity_name

    host = _target(settings_nodes, "AzureWebJobsStorage__accountName")
    data = _target(settings_nodes, "DATA_STORAGE__accountName")
    vault = _target(settings_nodes, "KEY_VAULT_URL")
    insights = _target(settings_nodes, "APPLICATIONINSIGHTS_CONNECTION_STRING")
    accounts = resources_of_type(bicep, "Microsoft.Storage/storageAccounts")
    assert host in accounts and data in accounts and host != data
    assert vault in resources_of_type(bicep, "Microsoft.KeyVault/vaults")
    assert insights in resources_of_type(bicep, "Microsoft.Insights/components")

    assigned = set()
    for assignment in role_assignments(bicep):
        assert assignment.principal == [identity_name, "properties", "principalId"], assignment
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


def test_storage_accounts_refuse_shared_keys_and_public_blobs(bicep: dict[str, Any]) -> None:
    accounts = resources_of_type(bicep, "Microsoft.Storage/storageAccounts")
    assert len(accounts) == 2
    for name, account in accounts.items():
        properties = account["properties"]
        assert properties["allowSharedKeyAccess"] is False, name
        assert properties["allowBlobPublicAccess"] is False, name
        assert properties["supportsHttpsTrafficOnly"] is True, name
        assert properties["minimumTlsVersion"] == "TLS1_2", name
    for name, container in resources_of_type(
        bicep, "Microsoft.Storage/storageAccounts/blobServices/containers"
    ).items():
        assert container["properties"]["publicAccess"] == "None", name


def test_key_vault_uses_rbac_soft_delete_and_purge_protection(bicep: dict[str, Any]) -> None:
    (vault,) = resources_of_type(bicep, "Microsoft.KeyVault/vaults").values()
    properties = vault["properties"]
    assert properties["enableRbacAuthorization"] is True
    assert properties["enableSoftDelete"] is True
    assert properties["enablePurgeProtection"] is True
    assert "accessPolicies" not in properties


def test_application_insights_is_workspace_based_with_entra_ingestion(
    bicep: dict[str, Any], settings_nodes: dict[str, Any]
) -> None:
    (insights,) = resources_of_type(bicep, "Microsoft.Insights/components").values()
    assert accessor_path(insights["properties"]["WorkspaceResourceId"])[0] in resources_of_type(
        bicep, "Microsoft.OperationalInsights/workspaces"
    )
    assert insights["properties"]["DisableLocalAuth"] is True
    assert "Authorization=AAD" in settings_nodes["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]


# --- Function App, Postgres, queues --------------------------------------------------------------


def test_the_function_app_runs_python_311_on_flex_consumption(bicep: dict[str, Any], site: dict[str, Any]) -> None:
    (plan,) = resources_of_type(bicep, "Microsoft.Web/serverfarms").values()
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"]["name"] == "python"
    assert _default(bicep, config["runtime"]["version"]) == "3.11"
    assert _default(bicep, config["scaleAndConcurrency"]["instanceMemoryMB"]) == 4096
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"].startswith("${hostStorage.properties.primaryEndpoints.blob}")
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert site["properties"]["httpsOnly"] is True


def test_postgres_uses_entra_auth_tls_and_allows_postgis(bicep: dict[str, Any], settings_nodes: dict[str, Any]) -> None:
    (server,) = resources_of_type(bicep, "Microsoft.DBforPostgreSQL/flexibleServers").values()
    assert server["properties"]["authConfig"]["activeDirectoryAuth"] == "Enabled"
    assert resources_of_type(bicep, "Microsoft.DBforPostgreSQL/flexibleServers/administrators")
    parameters = {
        config["name"]: config["properties"]["value"]
        for config in resources_of_type(bicep, "Microsoft.DBforPostgreSQL/flexibleServers/configurations").values()
    }
    assert "POSTGIS" in parameters["azure.extensions"].split(",")
    assert parameters["require_secure_transport"] == "ON"
    assert "max_connections" in parameters
    assert settings_nodes["POSTGRES_SSLMODE"] == "require"
    assert _default(bicep, "postgresAuth") == "entra"


def test_every_queue_the_triggers_bind_is_created(bicep: dict[str, Any], settings_nodes: dict[str, Any]) -> None:
    created = set(bicep["variables"]["queueNames"]["value"])
    for setting in ("JOB_QUEUE", "TASK_QUEUE", "HIGH_PRIORITY_TASK_QUEUE"):
        parameter = settings_nodes[setting]
        assert parameter in bicep["parameters"], f"{setting} should come from a parameter"
        assert parameter in created and f"${{{parameter}}}-poison" in created, setting


def test_the_parameters_file_matches_the_template(bicep: dict[str, Any]) -> None:
    document = json.loads((INFRA_DIR / "main.parameters.json").read_text(encoding="utf-8"))
    assert document["$schema"].endswith("/deploymentParameters.json#")
    given = set(document["parameters"])
    unknown = given - set(bicep["parameters"])
    assert not unknown, f"main.parameters.json sets parameters main.bicep does not have: {sorted(unknown)}"
    required = {name for name, parameter in bicep["parameters"].items() if "default" not in parameter}
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
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                if not relative.startswith(NOT_RUNTIME):
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
