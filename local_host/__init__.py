"""A local Azure Functions host for ``function_app.app`` (Core Tools stand-in), run against Azurite.

``python -m local_host start --workers N`` runs N host instances that share one HTTP port and
compete for queue messages, with the Azure host's queue, timer and HTTP semantics.
"""
