"""Job parameter models whose default containers come from the deployment's settings.

Parameter models declare ``bronze``/``silver`` as defaults so that they read well on their own;
a deployment that names its containers differently (``BRONZE_CONTAINER``, ``SILVER_CONTAINER``)
gets a subclass with those defaults instead, so an omitted ``container`` means *this* deployment's
bronze container in every job type, and ``GET /api/job-types`` shows the real defaults.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from pydantic import BaseModel, Field, create_model

from schemas.blob_names import ContainerName
from schemas.settings import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)

# Which field takes which settings' container: sources from bronze, outputs to silver.
SOURCE_FIELD, OUTPUT_FIELD = "container", "output_container"


def with_default_containers(model: type[ModelT], **defaults: str) -> type[ModelT]:
    """``model`` with new defaults for the named container fields (those it has); itself if none change."""
    fields = model.model_fields
    changed = {name: value for name, value in defaults.items() if name in fields and fields[name].default != value}
    if not changed:
        return model
    overrides: dict[str, Any] = {
        name: (ContainerName, Field(default=value, description=fields[name].description))
        for name, value in changed.items()
    }
    return cast(type[ModelT], create_model(model.__name__, __base__=model, **overrides))


def deployment_parameters_model(model: type[ModelT], settings: Settings) -> type[ModelT]:
    """``model`` with the deployment's bronze container as source and silver container as output."""
    return with_default_containers(
        model, **{SOURCE_FIELD: settings.bronze_container, OUTPUT_FIELD: settings.silver_container}
    )
