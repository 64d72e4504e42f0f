"""Install what ``make`` needs and the machine lacks, before .venv exists (standard library only).

The Makefile runs this with the system ``python3``:

- ``system [python-venv] [npm] [postgres] [postgis] [chromium] [gdal]``: the system packages behind
  those names, installed with apt-get (Debian/Ubuntu, as root), each announced in one line saying
  what and why, with apt's own progress shown. Not root, or no apt-get: one line naming what to
  install, exit code 1.
- ``venv DIR``: a working virtual environment in DIR; a half-made or broken one (no pip, made by
  another Python, a dangling interpreter link) is removed and made again.
- ``npm-ci``: ``npm ci`` of the project's package-lock.json (Azurite) run by the pinned Node.js
  runtime in devstack/node, so Azurite's engine requirement is checked against the Node it runs on.

Azurite needs Node.js >= 22; Debian 12 ships 18. The runtime comes from the npm registry as the
``node-linux-<arch>`` package (devstack/node/package.json, pinned in its lock file), installed by
whatever npm the machine has; ``node_executable()`` is the one place that chooses the Node to run.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NODE_RUNTIME_DIR = PROJECT_ROOT / "devstack" / "node"
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian/Ubuntu's ca-certificates
MIN_NODE_MAJOR = 22  # azurite's "engines": {"node": ">=22.0.0"}


def say(line: str) -> None:
    print(f"geoetl: {line}", flush=True)


def find_postgres_bindir() -> Path | None:
    """The bin directory holding initdb and pg_ctl (pg_config first, then Debian's layout)."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    for candidate in sorted(versions, key=lambda p: int(p.parent.name), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


DEBIAN_POSTGRES_MAJOR = 15  # what Debian 12's "postgresql" installs


def postgres_major() -> int:
    """The major version of the Postgres server binaries here (Debian 12's when none are installed yet)."""
    bindir = find_postgres_bindir()
    if bindir is not None and bindir.parent.name.isdigit():
        return int(bindir.parent.name)
    if bindir is not None and (pg_config := shutil.which("pg_config")):
        out = subprocess.run([pg_config, "--version"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"(\d+)", out)
        if match:
            return int(match.group(1))
    return DEBIAN_POSTGRES_MAJOR


def has_postgis(major: int | None = None) -> bool:
    """PostGIS for the installed Postgres: its extension control file in that version's share directory."""
    version = major if major is not None else postgres_major()
    return Path(f"/usr/share/postgresql/{version}/extension/postgis.control").exists()


def find_chromium() -> Path | None:
    """Debian's Chromium, which the dashboard's browser test drives headless (Playwright brings no browser)."""
    on_path = shutil.which("chromium")
    if on_path:
        return Path(on_path)
    debian = Path("/usr/bin/chromium")
    return debian if debian.exists() else None


def has_libatomic() -> bool:
    """libatomic.so.1, which the Node.js driver in Playwright's wheel loads (Chromium does not pull it in)."""
    patterns = (
        "/usr/lib/*/libatomic.so.1",
        "/lib/*/libatomic.so.1",
        "/usr/lib/libatomic.so.1",
        "/usr/lib64/libatomic.so.1",
    )
    return any(glob.glob(pattern) for pattern in patterns)


def _python_has_venv(python: str = sys.executable) -> bool:
    """venv alone is not enough: Debian splits ensurepip (which venv needs for pip) into python3-venv."""
    probe = subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True, check=False)
    return probe.returncode == 0


@dataclass(frozen=True)
class Requirement:
    name: str
    apt_packages: tuple[str, ...]
    why: str
    present: Callable[[], bool]


REQUIREMENTS = {
    "python-venv": Requirement(
        "python-venv",
        ("python3-venv",),
        "Python's venv module with ensurepip, to make .venv",
        _python_has_venv,
    ),
    "npm": Requirement(
        "npm",
        ("npm",),
        "npm installs the pinned Node.js runtime and Azurite (the storage emulator) from the npm registry",
        lambda: shutil.which("npm") is not None,
    ),
    "postgres": Requirement(
        "postgres",
        ("postgresql",),
        "the PostgreSQL server binaries, for the project's own Postgres in .stack/ (stack and tests)",
        lambda: find_postgres_bindir() is not None,
    ),
    "postgis": Requirement(
        "postgis",
        (f"postgresql-{postgres_major()}-postgis-3",),
        "PostGIS for that Postgres (same major version): stage_vector creates the extension on first use",
        has_postgis,
    ),
    "chromium": Requirement(
        "chromium",
        ("chromium", "fonts-liberation", "libatomic1"),
        "a headless Chromium (with fonts for its screenshots) and libatomic1 (Playwright's Node.js driver "
        "needs it), for the dashboard's browser test",
        lambda: find_chromium() is not None and has_libatomic(),
    ),
    "gdal": Requirement(
        "gdal",
        ("gdal-bin",),
        "GDAL's command-line tools (gdalwarp), the reference process_raster's warped output is compared "
        "with in the tests",
        lambda: shutil.which("gdalwarp") is not None,
    ),
}


def can_use_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install_system(names: Sequence[str]) -> int:
    unknown = [n for n in names if n not in REQUIREMENTS]
    if unknown:
        say(f"unknown requirement(s) {', '.join(unknown)}; known: {', '.join(REQUIREMENTS)}")
        return 2
    missing = [REQUIREMENTS[n] for n in names if not REQUIREMENTS[n].present()]
    if not missing:
        return 0
    packages = [p for req in missing for p in req.apt_packages]
    if not can_use_apt():
        reason = "not running as root" if shutil.which("apt-get") else "no apt-get on this machine"
        needs = "; ".join(f"{req.name} ({req.why})" for req in missing)
        say(
            f"missing {needs}. Install them ({reason}): on Debian/Ubuntu `sudo apt-get install {' '.join(packages)}`, "
            "elsewhere see README.md, 'Other systems'."
        )
        return 1
    for req in missing:
        say(f"installing {' '.join(req.apt_packages)} with apt-get: {req.why}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt_flags = ["-o", "Dpkg::Use-Pty=0", "-o", "APT::Color=0"]
    subprocess.run(["apt-get", *apt_flags, "update"], check=True, env=env)
    subprocess.run(["apt-get", *apt_flags, "install", "-y", "--no-install-recommends", *packages], check=True, env=env)
    still = [req.name for req in missing if not req.present()]
    if still:
        say(f"apt-get finished but {', '.join(still)} is still missing")
        return 1
    return 0


def venv_problem(venv: Path, python: str = sys.executable) -> str | None:
    """Why ``venv`` is not usable (None when it is): missing, no pip, another Python, a broken link."""
    interpreter = venv / "bin" / "python"
    if not venv.exists():
        return "missing"
    if not interpreter.exists():  # also a dangling link to a Python that was removed
        return f"{interpreter} does not run"
    probe = subprocess.run(
        [str(interpreter), "-c", "import sys, pip; print('{}.{}'.format(*sys.version_info[:2]))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        lines = (probe.stderr.strip() or "no output").splitlines()
        return f"it is half-made ({lines[-1]})"
    wanted = "{}.{}".format(*sys.version_info[:2])
    if probe.stdout.strip() != wanted:
        return f"it was made with Python {probe.stdout.strip()}, not {wanted}"
    return None


def ensure_venv(venv: Path) -> int:
    problem = venv_problem(venv)
    if problem is None:
        return 0
    if problem != "missing":
        say(f"{venv} is not usable: {problem}; making it again")
        shutil.rmtree(venv)
    say(f"creating {venv} with {sys.executable} (Python {sys.version.split()[0]})")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    problem = venv_problem(venv)
    if problem is not None:
        say(f"{venv} was created but is not usable: {problem}")
        return 1
    return 0


def node_major(node: str | Path) -> int | None:
    try:
        out = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError:
        return None
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else None


def node_executable() -> Path:
    """The Node.js that runs Azurite: the pinned runtime in devstack/node, else a system node >= 22."""
    # The package's own path: some npm versions (Debian 12's npm 9) install it but link no .bin/node.
    for pinned in sorted(NODE_RUNTIME_DIR.glob("node_modules/node-*-*/bin/node")):
        if (node_major(pinned) or 0) >= MIN_NODE_MAJOR:
            return pinned
    system = shutil.which("node")
    if system and (node_major(system) or 0) >= MIN_NODE_MAJOR:
        return Path(system)
    found = f"found {system} (Node.js {node_major(system)})" if system else "no node on PATH"
    raise RuntimeError(
        f"Azurite needs Node.js >= {MIN_NODE_MAJOR}: {found}, and devstack/node has no runtime for this "
        f"platform (linux x64/arm64 only); install Node.js {MIN_NODE_MAJOR} or newer"
    )


def npm_ci_with_runtime() -> int:
    """npm ci of the project's package-lock.json, npm and Node both taken from the pinned runtime."""
    try:
        node = node_executable()
    except RuntimeError as error:
        say(str(error))
        return 1
    npm_cli = NODE_RUNTIME_DIR / "node_modules" / "npm" / "bin" / "npm-cli.js"
    command = [str(node), str(npm_cli)] if npm_cli.exists() else ["npm"]
    env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # Node's own build trusts only its bundled CAs; a registry reached through a proxy with a local CA
    # (trusted by the system, and so by the system's npm) needs the system bundle too.
    if SYSTEM_CA_BUNDLE.exists() and "NODE_EXTRA_CA_CERTS" not in env:
        env["NODE_EXTRA_CA_CERTS"] = str(SYSTEM_CA_BUNDLE)
    say(f"installing Azurite from package-lock.json with Node.js {node_major(node)} ({node})")
    result = subprocess.run([*command, "ci", "--no-audit", "--no-fund"], cwd=PROJECT_ROOT, env=env, check=False)
    return result.returncode


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    command, args = argv[0], list(argv[1:])
    if command == "system":
        return install_system(args)
    if command == "venv" and len(args) == 1:
        return ensure_venv(Path(args[0]))
    if command == "npm-ci" and not args:
        return npm_ci_with_runtime()
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
