"""``python -m services.cli`` runs the ``geoetl`` command line."""

from services.cli.main import app

app(prog_name="geoetl")
