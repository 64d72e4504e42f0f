"""Load ``function_app.app`` and turn its declared functions and bindings into typed specs.

Only the public azure.functions API is used: ``FunctionApp.get_functions()`` and, per function,
``get_function_name()``, ``get_bindings_dict()`` and ``get_user_function()``.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_host.app_settings import SettingsError, resolve_placeholders
from local_host.routing import RouteTemplate, RouteTemplateError
from local_host.timer_schedule import Schedule, ScheduleError, schedule_timezone

DEFAULT_CONNECTION = "AzureWebJobsStorage"
AUTH_LEVELS = ("ANONYMOUS", "FUNCTION", "ADMIN")
_QUEUE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class FunctionIndexError(RuntimeError):
    """The app cannot be loaded or declares something the local host cannot run."""


@dataclass(frozen=True)
class HttpTrigger:
    param: str
    route: RouteTemplate
    methods: frozenset[str] | None
    auth_level: str


@dataclass(frozen=True)
class QueueTrigger:
    param: str
    queue_name: str
    connection_setting: str


@dataclass(frozen=True)
class TimerTrigger:
    param: str
    schedule: Schedule
    run_on_startup: bool
    use_monitor: bool | None


@dataclass(frozen=True)
class QueueOutput:
    param: str  # "$return" when the return value is the message
    queue_name: str
    connection_setting: str


Trigger = HttpTrigger | QueueTrigger | TimerTrigger


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    user_function: Callable[..., Any]
    trigger: Trigger
    queue_outputs: tuple[QueueOutput, ...] = ()
    wants_context: bool = False
    directory: str = field(default="")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)


def plain(value: Any) -> Any:
    """Binding dicts hold enums (direction, methods, authLevel); turn them into their plain values."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def load_function_app(app_dir: Path) -> Any:
    """Import ``function_app`` from ``app_dir`` (made cwd and first on sys.path) and return its ``app``."""
    app_dir = app_dir.resolve()
    if not (app_dir / "function_app.py").exists():
        raise FunctionIndexError(f"{app_dir}/function_app.py not found")
    os.chdir(app_dir)
    sys.path.insert(0, str(app_dir))
    module = importlib.import_module("function_app")
    app = getattr(module, "app", None)
    if app is None or not callable(getattr(app, "get_functions", None)):
        raise FunctionIndexError(f"{app_dir}/function_app.py has no azure.functions FunctionApp named `app`")
    return app


def _queue_name(raw: Any, environ: Mapping[str, str], what: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise FunctionIndexError(f"{what}: queueName is required")
    name = resolve_placeholders(raw, environ, what=what).lower()
    if not 3 <= len(name) <= 63 or not set(name) <= _QUEUE_NAME_CHARS or name[0] == "-" or "--" in name:
        raise FunctionIndexError(f"{what}: {name!r} is not a valid storage queue name")
    return name


def _connection(binding: dict[str, Any], environ: Mapping[str, str], what: str) -> str:
    setting = binding.get("connection") or DEFAULT_CONNECTION
    if setting not in environ:
        raise FunctionIndexError(f"{what}: connection setting {setting!r} is not set")
    return str(setting)


def _http_trigger(name: str, binding: dict[str, Any]) -> HttpTrigger:
    route = binding.get("route") or name
    try:
        template = RouteTemplate.parse(route)
    except RouteTemplateError as error:
        raise FunctionIndexError(f"function {name}: {error}") from error
    methods = binding.get("methods")
    method_set = frozenset(str(method).upper() for method in methods) if methods else None
    level = str(binding.get("authLevel") or "FUNCTION").upper()
    if level not in AUTH_LEVELS:
        raise FunctionIndexError(f"function {name}: unknown authLevel {level!r}")
    return HttpTrigger(binding["name"], template, method_set, level)


def _timer_trigger(name: str, binding: dict[str, Any], environ: Mapping[str, str]) -> TimerTrigger:
    what = f"function {name}"
    raw = binding.get("schedule")
    if not isinstance(raw, str):
        raise FunctionIndexError(f"{what}: schedule is required")
    try:
        schedule = Schedule.parse(resolve_placeholders(raw, environ, what=what), schedule_timezone(dict(environ)))
    except ScheduleError as error:
        raise FunctionIndexError(f"{what}: {error}") from error
    monitor = binding.get("useMonitor")
    use_monitor = None if monitor is None else bool(monitor)
    return TimerTrigger(binding["name"], schedule, bool(binding.get("runOnStartup")), use_monitor)


def _parameters(function: Callable[..., Any]) -> tuple[set[str], set[str]]:
    """(all parameter names, names without a default) of the user function."""
    signature = inspect.signature(function)
    names = set(signature.parameters)
    required = {
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    return names, required


def _parse_binding(name: str, binding: dict[str, Any], environ: Mapping[str, str]) -> Trigger | QueueOutput | None:
    """A trigger, a queue output, or None for the HTTP ``$return`` output; anything else is unsupported."""
    what = f"function {name}"
    kind = binding.get("type")
    if kind == "httpTrigger":
        return _http_trigger(name, binding)
    if kind == "queueTrigger":
        queue = _queue_name(binding.get("queueName"), environ, what)
        return QueueTrigger(binding["name"], queue, _connection(binding, environ, what))
    if kind == "timerTrigger":
        return _timer_trigger(name, binding, environ)
    if kind == "http" and binding.get("name") == "$return":
        return None
    if kind == "queue" and binding.get("direction") in (1, "out", "OUT"):
        queue = _queue_name(binding.get("queueName"), environ, what)
        return QueueOutput(binding["name"], queue, _connection(binding, environ, what))
    raise FunctionIndexError(
        f"{what}: binding {binding.get('name')!r} of type {kind!r} is not supported by the local host "
        "(supported: httpTrigger, queueTrigger, timerTrigger, queue output)"
    )


def build_function_spec(function: Any, environ: Mapping[str, str]) -> FunctionSpec:
    name = str(function.get_function_name())
    user_function = function.get_user_function()
    bindings = [plain(binding) for binding in function.get_bindings_dict()["bindings"]]
    what = f"function {name}"
    trigger: Trigger | None = None
    outputs: list[QueueOutput] = []
    bound_names: set[str] = set()
    for binding in bindings:
        try:
            parsed = _parse_binding(name, binding, environ)
        except SettingsError as error:
            raise FunctionIndexError(str(error)) from error
        if isinstance(parsed, QueueOutput):
            outputs.append(parsed)
        elif parsed is not None:
            if trigger is not None:
                raise FunctionIndexError(f"{what}: more than one trigger")
            trigger = parsed
        if binding["name"] != "$return":
            bound_names.add(binding["name"])
    if trigger is None:
        raise FunctionIndexError(f"{what}: no trigger binding")
    if isinstance(trigger, HttpTrigger) and any(o.param == "$return" for o in outputs):
        raise FunctionIndexError(f"{what}: an HTTP function's return value is its response")
    names, required = _parameters(user_function)
    wants_context = "context" in names and "context" not in bound_names
    missing = required - bound_names - ({"context"} if wants_context else set())
    if missing:
        raise FunctionIndexError(f"{what}: parameters {sorted(missing)} are not declared as bindings")
    unknown = bound_names - names
    if unknown:
        raise FunctionIndexError(f"{what}: bindings {sorted(unknown)} have no matching function parameter")
    directory = str(Path(inspect.getfile(user_function)).resolve().parent)
    return FunctionSpec(name, user_function, trigger, tuple(outputs), wants_context, directory)


def index_functions(app: Any, environ: Mapping[str, str]) -> list[FunctionSpec]:
    specs = [build_function_spec(function, environ) for function in app.get_functions()]
    seen: set[str] = set()
    for spec in specs:
        if spec.name.lower() in seen:
            raise FunctionIndexError(f"two functions are named {spec.name!r}")
        seen.add(spec.name.lower())
    return specs


def describe_functions(specs: list[FunctionSpec], base_url: str) -> str:
    """A listing like Core Tools prints at start-up."""
    lines = ["", "Functions:", ""]
    for spec in specs:
        trigger = spec.trigger
        if isinstance(trigger, HttpTrigger):
            methods = ",".join(sorted(trigger.methods)) if trigger.methods else "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS"
            route = trigger.route.template.strip("/")
            url = f"{base_url}/{route}" if route else base_url
            lines.append(f"\t{spec.name}: [{methods}] {url}")
        elif isinstance(trigger, QueueTrigger):
            lines.append(f"\t{spec.name}: queueTrigger ({trigger.queue_name})")
        else:
            lines.append(f"\t{spec.name}: timerTrigger ({trigger.schedule.expression})")
        lines.append("")
    return "\n".join(lines)
