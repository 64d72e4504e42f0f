"""validate_stac's parameters: which STAC objects (a prefix or a catalog to walk) and how."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.blob_names import BlobPath, ContainerName
from services.inventory.chunks import BlobPrefix

DEFAULT_CHECKSUM_BUDGET = 2 * 1024**3


class ValidateStacParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    container: ContainerName = Field(default="silver", description="Container holding the STAC objects.")
    prefix: BlobPrefix | None = Field(
        default=None,
        max_length=1024,
        description="Validate every *.json blob whose name starts with this ('' = the whole container). "
        "The default when catalog is not given.",
    )
    catalog: BlobPath | None = Field(
        default=None,
        description="A catalog or collection JSON blob: validate it and everything its child and item links "
        "reach within the container. Not together with prefix.",
    )
    chunk_size: int = Field(default=1000, ge=1, le=10_000, description="STAC objects per validation task.")
    output_container: ContainerName = Field(default="silver", description="Container for the JSON Lines report.")
    verify_checksums: bool = Field(
        default=True, description="Download assets that declare file:checksum and compare (within the budget)."
    )
    max_checksum_bytes: int = Field(
        default=DEFAULT_CHECKSUM_BUDGET,
        ge=0,
        le=1024**4,
        description="Bytes one task may download to verify checksums; assets past it are counted as not verified.",
    )
    max_paths_per_error: int = Field(
        default=20, ge=1, le=1000, description="Object paths listed per problem type in the job result."
    )

    @model_validator(mode="after")
    def _prefix_or_catalog(self) -> Self:
        if self.prefix is not None and self.catalog is not None:
            raise ValueError("give prefix or catalog, not both")
        return self

    @property
    def source(self) -> str:
        """What is validated, for messages and the result."""
        if self.catalog is not None:
            return f"{self.container}/{self.catalog}"
        return f"{self.container}/{self.prefix or ''}"
