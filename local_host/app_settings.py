"""App settings: ``local.settings.json`` into the environment, and ``%NAME%`` placeholder resolution."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path

logger = logging.getLogger("local_host.settings")

_PLACEHOLDER = re.compile(r"%([^%]+)%")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


class SettingsError(ValueError):
    """local.settings.json is unusable, or a binding names an app setting that is not set."""


def is_truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE_WORDS


def _as_setting_text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise SettingsError(f"local.settings.json Values.{name} must be a string, got {type(value).__name__}")


def read_local_settings(path: Path) -> dict[str, str] | None:
    """The ``Values`` of a Core Tools ``local.settings.json``, or None when the file does not exist."""
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise SettingsError(f"{path}: invalid JSON: {error}") from error
    if not isinstance(document, dict):
        raise SettingsError(f"{path}: must hold a JSON object")
    if document.get("IsEncrypted"):
        raise SettingsError(f"{path}: IsEncrypted is true; decrypt it with `func settings decrypt` first")
    values = document.get("Values")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: Values must be an object")
    return {str(name): _as_setting_text(str(name), value) for name, value in values.items()}


def apply_settings(values: Mapping[str, str], environ: MutableMapping[str, str]) -> list[str]:
    """Put settings into ``environ`` unless already set there (the environment wins). Returns names applied."""
    applied = []
    for name, value in values.items():
        if name not in environ:
            environ[name] = value
            applied.append(name)
    return applied


def load_settings_into_environment(path: Path, environ: MutableMapping[str, str]) -> None:
    values = read_local_settings(path)
    if values is None:
        logger.info("No settings file at %s: using the environment only", path)
        return
    applied = apply_settings(values, environ)
    overridden = sorted(set(values) - set(applied))
    logger.info(
        "Loaded %d settings from %s (%d already set in the environment)",
        len(applied),
        path,
        len(overridden),
        extra={"overridden_settings": overridden},
    )


def resolve_placeholders(text: str, environ: Mapping[str, str], *, what: str) -> str:
    """Replace every ``%NAME%`` in ``text`` with the app setting NAME; a missing one is an error."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise SettingsError(f"{what}: app setting {name!r} (from {text!r}) is not set")
        return environ[name]

    return _PLACEHOLDER.sub(substitute, text)
