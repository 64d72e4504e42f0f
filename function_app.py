"""geoetl Function App: the edge. Settings are read here, once, and passed down."""

from __future__ import annotations

import azure.functions as func

from schemas.settings import Settings
from services.container import ServiceContainer
from triggers import http_containers, http_health, http_jobs, http_log_redaction, http_operations, queue_engine
from triggers.http_dashboard import create_blueprint as dashboard_blueprint

http_log_redaction.install()  # no function key or account key in the app's own log records
settings = Settings()
container = ServiceContainer(settings)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(http_jobs.create_blueprint(container))
app.register_functions(http_containers.create_blueprint(container))
app.register_functions(http_health.create_blueprint(container))
app.register_functions(http_operations.create_blueprint(container))
app.register_functions(dashboard_blueprint(container))
app.register_functions(queue_engine.create_blueprint(container))
