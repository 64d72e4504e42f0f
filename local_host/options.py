"""Command-line options shared by the supervisor (``start``) and a single host instance (``worker``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostOptions:
    app_dir: Path
    workers: int = 1
    host: str = "127.0.0.1"
    port: int = 7071
    settings: Path | None = None  # None: <app_dir>/local.settings.json
    message_lease_seconds: int = 600
    grace_seconds: float = 30.0
    state_file: Path | None = None

    @property
    def settings_path(self) -> Path:
        return self.settings if self.settings is not None else self.app_dir / "local.settings.json"

    def worker_arguments(self) -> list[str]:
        """Arguments that make a ``worker`` subcommand see the same options."""
        return [
            "--app-dir", str(self.app_dir),
            "--host", self.host,
            "--port", str(self.port),
            "--settings", str(self.settings_path),
            "--message-lease-seconds", str(self.message_lease_seconds),
            "--grace-seconds", str(self.grace_seconds),
        ]  # fmt: skip


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a TCP port (1-65535)")
    return value


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-dir", type=Path, default=Path.cwd(), help="folder holding function_app.py (default: cwd)"
    )
    parser.add_argument("--workers", type=_positive_int, default=1, help="host instances to run (default: 1)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP listen address (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=7071, help="HTTP port shared by all workers (default: 7071)")
    parser.add_argument("--settings", type=Path, help="settings file (default: <app-dir>/local.settings.json)")
    parser.add_argument(
        "--message-lease-seconds",
        type=_positive_int,
        default=600,
        help="visibility a received queue message gets, renewed every half of it (default: 600)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=_non_negative_float,
        default=30.0,
        help="time in-flight invocations get to finish on shutdown (default: 30)",
    )
    parser.add_argument("--state-file", type=Path, help="JSON file describing the supervisor and worker pids")


def options_from_namespace(namespace: argparse.Namespace) -> HostOptions:
    return HostOptions(
        app_dir=namespace.app_dir.resolve(),
        workers=namespace.workers,
        host=namespace.host,
        port=namespace.port,
        settings=namespace.settings.resolve() if namespace.settings else None,
        message_lease_seconds=namespace.message_lease_seconds,
        grace_seconds=namespace.grace_seconds,
        state_file=namespace.state_file.resolve() if namespace.state_file else None,
    )
