"""``python -m local_host start|worker``."""

from __future__ import annotations

import argparse
import sys

from local_host.options import add_host_arguments, options_from_namespace
from local_host.supervisor import run_supervisor
from local_host.worker import run_worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local_host",
        description="Run function_app.app like the Azure Functions host, against Azurite.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="supervisor: run --workers host instances sharing --port")
    add_host_arguments(start)
    worker = commands.add_parser("worker", help="one host instance (normally started by `start`)")
    add_host_arguments(worker)
    worker.add_argument("--index", type=int, default=0, help="this instance's index (default: 0)")
    worker.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    namespace = build_parser().parse_args(argv)
    options = options_from_namespace(namespace)
    if namespace.command == "start":
        return run_supervisor(options)
    return run_worker(options, namespace.index, ready_fd=namespace.ready_fd, parent_pid=namespace.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
