"""Job parameter models whose default containers come from the deployment's settings.

Parameter models declare ``bronze``/``silver`` as defaults so that they read well on their own;
a deployment that names its containers differently (``BRONZE_CONTAINER``, ``SILVER_CONTAINER``)
gets a subclass with those defaults instead, so an omitted ``container`` means *this* deployment's
bronze container in every job type, and ``GET /api/job-types`` shows the real defaults.

The subclass also enforces the deployment's data boundaries: a source container must be one of
INPUT_CONTAINERS and an output container one of OUTPUT_CONTAINERS (``Settings.readable_containers``
/ ``writable_containers``), so a job can never read or write the Functions host's own containers or
any other the deployment did not name; a submission naming another is refused with a 400 naming
the field.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from pydantic import BaseModel, Field, create_model, field_validator
from pydantic_core import PydanticCustomError

from schemas.blob_names import ContainerName
from schemas.settings import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)

# Which field takes which settings' container: sources from bronze, outputs to silver.
SOURCE_FIELD, OUTPUT_FIELD = "container", "output_container"


def _allowed_in(field: str, allowed: tuple[str, ...], role: str) -> Any:
    """A field validator refusing a container outside ``allowed``."""

    def check(cls: type[BaseModel], value: str) -> str:
        if value not in allowed:
            raise PydanticCustomError(
                "container_not_allowed",
                "container '{container}' is not {role} by this deployment (allowed: {allowed})",
                {"container": value, "role": role, "allowed": ", ".join(allowed)},
            )
        return value

    return field_validator(field)(classmethod(check))


def with_default_containers(
    model: type[ModelT],
    *,
    readable: tuple[str, ...] | None = None,
    writable: tuple[str, ...] | None = None,
    **defaults: str,
) -> type[ModelT]:
    """``model`` with new defaults for the named container fields (those it has), and with its source
    field limited to ``readable`` and its output field to ``writable`` containers (when given)."""
    fields = model.model_fields
    changed = {name: value for name, value in defaults.items() if name in fields and fields[name].default != value}
    validators: dict[str, Any] = {}
    if readable is not None and SOURCE_FIELD in fields:
        validators["_source_container_allowed"] = _allowed_in(SOURCE_FIELD, readable, "readable")
    if writable is not None and OUTPUT_FIELD in fields:
        validators["_output_container_allowed"] = _allowed_in(OUTPUT_FIELD, writable, "writable")
    if not changed and not validators:
        return model
    overrides: dict[str, Any] = {
        name: (ContainerName, Field(default=value, description=fields[name].description))
        for name, value in changed.items()
    }
    return cast(type[ModelT], create_model(model.__name__, __base__=model, __validators__=validators, **overrides))


def deployment_parameters_model(model: type[ModelT], settings: Settings) -> type[ModelT]:
    """``model`` with the deployment's bronze container as source and silver container as output,
    each limited to the deployment's allowed containers."""
    return with_default_containers(
        model,
        readable=settings.readable_containers,
        writable=settings.writable_containers,
        **{SOURCE_FIELD: settings.bronze_container, OUTPUT_FIELD: settings.silver_container},
    )
