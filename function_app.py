"""geoetl Function App: the edge. Settings are read here, once, and passed down."""

from __future__ import annotations

import logging

import azure.functions as func

from repositories.key_vault import unresolved_key_vault_references
from schemas.settings import Settings
from services.container import ServiceContainer
from services.telemetry.metrics import observe_backlog
from services.telemetry.setup import TelemetryOptions, configure_telemetry
from triggers import (
    http_containers,
    http_dashboard,
    http_health,
    http_jobs,
    http_log_redaction,
    http_openapi,
    http_operations,
    http_stac,
    queue_engine,
    queue_webhooks,
)

http_log_redaction.install()  # no function key or account key in the app's own log records
settings = Settings()
for name in unresolved_key_vault_references(settings):  # App Service could not resolve the reference
    logging.getLogger("geoetl.startup").error(
        "app setting %s still holds an unresolved @Microsoft.KeyVault(...) reference: grant the app's identity "
        "'Key Vault Secrets User' on the vault and check the secret exists; it is never used as a value",
        name,
    )
# Application Insights when APPLICATIONINSIGHTS_CONNECTION_STRING is set; otherwise nothing starts.
telemetry = configure_telemetry(
    TelemetryOptions(settings.applicationinsights_connection_string.get_secret_value(), service_name=settings.site_name)
)
container = ServiceContainer(settings)
if telemetry:
    observe_backlog(container.telemetry_backlog)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(http_jobs.create_blueprint(container))
app.register_functions(http_containers.create_blueprint(container))
app.register_functions(http_health.create_blueprint(container))
app.register_functions(http_operations.create_blueprint(container))
app.register_functions(http_dashboard.create_blueprint(container))
app.register_functions(http_stac.create_blueprint(container))
app.register_functions(http_openapi.create_blueprint(container, app))
app.register_functions(queue_engine.create_blueprint(container))
app.register_functions(queue_webhooks.create_blueprint(container))
