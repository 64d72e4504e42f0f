"""Start and stop a real Azurite (npm package ``azurite``) for local runs and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.bootstrap import node_executable

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's well-known development account key (public, documented by Microsoft).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class AzuriteNotInstalledError(RuntimeError):
    """Raised when Azurite or a Node.js it runs on is missing (run ``make deps``)."""


def connection_string(blob_port: int = 10000, queue_port: int = 10001, table_port: int = 10002) -> str:
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob_port}/{ACCOUNT_NAME};"
        f"QueueEndpoint=http://127.0.0.1:{queue_port}/{ACCOUNT_NAME};"
        f"TableEndpoint=http://127.0.0.1:{table_port}/{ACCOUNT_NAME};"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def azurite_command() -> list[str]:
    """Azurite's entry script run by the pinned Node.js runtime (devstack/node; see devstack.bootstrap)."""
    script = PROJECT_ROOT / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"
    if not script.exists():
        raise AzuriteNotInstalledError(f"{script} not found: run `make deps` in {PROJECT_ROOT}")
    try:
        node = node_executable()
    except RuntimeError as error:
        raise AzuriteNotInstalledError(str(error)) from error
    return [str(node), str(script)]


@dataclass
class AzuriteProcess:
    process: subprocess.Popen[bytes]
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)


def start_azurite(
    *,
    location: Path,
    blob_port: int | None = None,
    queue_port: int | None = None,
    table_port: int | None = None,
    in_memory: bool = False,
    log_file: Path | None = None,
    startup_timeout: float = 30.0,
    tls: tuple[Path, Path] | None = None,
    oauth: bool = False,
) -> AzuriteProcess:
    """Start Azurite as its own process group and wait until blob and queue ports accept.

    ``tls`` (certificate, key PEM files) serves HTTPS; ``oauth`` (needs ``tls``) also accepts bearer
    tokens (Azurite's ``--oauth basic``: issuer, audience and expiry are checked, not the signature),
    as identity-based clients send them."""
    if oauth and tls is None:
        raise ValueError("Azurite accepts OAuth only over HTTPS: pass tls=(cert, key)")
    blob_port = blob_port or free_port()
    queue_port = queue_port or free_port()
    table_port = table_port or free_port()
    location.mkdir(parents=True, exist_ok=True)
    args = [
        *azurite_command(),
        "--silent",
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--loose",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(blob_port),
        "--queueHost",
        "127.0.0.1",
        "--queuePort",
        str(queue_port),
        "--tableHost",
        "127.0.0.1",
        "--tablePort",
        str(table_port),
    ]
    if tls is not None:
        args += ["--cert", str(tls[0]), "--key", str(tls[1])]
    if oauth:
        args += ["--oauth", "basic"]
    # Azurite refuses --location together with --inMemoryPersistence.
    args += ["--inMemoryPersistence"] if in_memory else ["--location", str(location)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    handle = AzuriteProcess(process, blob_port, queue_port, table_port)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"azurite exited with code {process.returncode} (log: {log_file})")
        if port_open(blob_port) and port_open(queue_port):
            return handle
        time.sleep(0.1)
    handle.stop()
    raise RuntimeError(f"azurite did not open ports {blob_port}/{queue_port} within {startup_timeout}s")
