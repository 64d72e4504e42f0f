"""``geoetl``: the operator's command line. It talks to the HTTP API only (never imports the engine):
submit and watch jobs, list jobs and tasks, cancel and retry, inspect and requeue dead letters and
poison messages, check health. Run ``geoetl --help`` or ``python -m services.cli --help``."""
