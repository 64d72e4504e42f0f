"""Operator tools behind /api/queues, /api/dead-letters, /api/poison and /api/stats (see docs/operations.md)."""

from services.operations.queues import QueueInspector
from services.operations.service import Operations, OperationsOptions

__all__ = ["Operations", "OperationsOptions", "QueueInspector"]
