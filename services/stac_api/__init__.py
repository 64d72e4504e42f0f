"""The STAC API served under /api/stac/ (triggers/http_stac.py), backed by pgstac's search functions."""

from services.stac_api.service import CONFORMANCE, StacApi

__all__ = ["CONFORMANCE", "StacApi"]
