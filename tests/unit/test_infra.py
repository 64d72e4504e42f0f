"""infra/*.bicep (main.bicep and the modules it wires), checked offline.

- checkov (from the infra venv, `make infra-tools`) finds no failed check in infra/; every skip is
  annotated in the Bicep with its reason.
- The Bicep, parsed with pycep-parser and followed across modules (tests/support/bicep.py): every
  module call passes the module's parameters; the app identity holds exactly the roles the code and
  the Functions host need, each on the right resource; both storage accounts refuse shared keys;
  the Key Vault uses RBAC. App settings: test_infra_settings.py; .funcignore: test_funcignore.py.

A missing infra venv fails these tests (with the command that installs it), never skips them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.bicep import (
    INFRA_DIR,
    MAIN_BICEP,
    AppSettings,
    Deployment,
    InfraToolsMissingError,
    ParameterRef,
    ResourceKey,
    ResourceRef,
    Value,
    accessor_path,
    role_assignments,
    run_checkov,
    walk,
)
from tests.support.bicep_lookup import default_of, parameter_default, setting_target

ROLE = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}

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
    assert setting_target(deployment, appsettings, "AZURE_CLIENT_ID") == identity
    assert setting_target(deployment, appsettings, "AzureWebJobsStorage__clientId") == identity

    host = setting_target(deployment, appsettings, "AzureWebJobsStorage__accountName")
    data = setting_target(deployment, appsettings, "DATA_STORAGE__accountName")
    vault = setting_target(deployment, appsettings, "KEY_VAULT_URL")
    insights = setting_target(deployment, appsettings, "APPLICATIONINSIGHTS_CONNECTION_STRING")
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
    identity = setting_target(deployment, appsettings, "AZURE_CLIENT_ID")
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
    assert default_of(deployment, site_key.module, config["runtime"]["version"]) == "3.11"
    assert default_of(deployment, site_key.module, config["scaleAndConcurrency"]["instanceMemoryMB"]) == 4096
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    # The package container: <host account blob endpoint><a container of the host account>.
    host = setting_target(deployment, appsettings, "AzureWebJobsStorage__accountName")
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
    identity = setting_target(deployment, appsettings, "AZURE_CLIENT_ID")
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
    assert {"BTREE_GIST", "UNACCENT"} <= set(parameters["azure.extensions"].split(","))  # pgstac
    assert parameters["require_secure_transport"] == "ON"
    assert "max_connections" in parameters
    assert settings_nodes["POSTGRES_SSLMODE"] == "require"
    assert parameter_default(deployment, "postgresAuth") == "entra"


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


def test_bicep_files_exist() -> None:
    assert MAIN_BICEP.is_file()
    assert Path(INFRA_DIR / "main.parameters.json").is_file()
