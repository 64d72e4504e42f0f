"""Statements behind the telemetry gauges (services/telemetry/backlog.py): the outbox backlog and
open dead letters, read in one round trip. SQL in repositories/sql/telemetry.sql."""

from __future__ import annotations

from typing import Any

from repositories.named_queries import NamedQueries


class TelemetryQueries(NamedQueries):
    SQL_FILE = "telemetry.sql"

    def backlog(self) -> dict[str, Any]:
        """outbox_messages, outbox_oldest_age_seconds (0 when empty), open_dead_letters."""
        row = self._one("backlog", {})
        if row is None:  # an aggregate always returns its row
            raise RuntimeError("the backlog statement returned no row")
        return row
