"""process_raster's parameters: the request model, the collection id rule and the source etag."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.blob_names import BlobPath, ContainerName
from services.raster.cog import Compression, OverviewResampling
from services.raster.crs import FORMS, CrsInputError, canonical_crs_text
from services.raster.pipeline import BlobRef
from services.raster.tiling import COG_BLOCK_SIZE
from services.stac.builder import (
    COLLECTION_ID_PATTERN,
    MAX_COLLECTION_ID_LENGTH,
    check_collection_id,
    collection_id_problem,
)

# A STAC collection id (the rule: services/stac/builder.COLLECTION_ID_RULE), checked at submission;
# every job type that takes one uses this type.
CollectionId = Annotated[
    str,
    AfterValidator(check_collection_id),
    Field(json_schema_extra={"pattern": COLLECTION_ID_PATTERN, "minLength": 1, "maxLength": MAX_COLLECTION_ID_LENGTH}),
]
COLLECTION_ID_HASH_DIGITS = 12  # 48 bits of SHA-256, after a slug that already has to match
_HASHED = re.compile(rf"-[0-9a-f]{{{COLLECTION_ID_HASH_DIGITS}}}$")
_EXTENSION = re.compile(r"(?<=[^/])\.[^./]+$")


def unquoted_etag(value: str) -> str:
    """An etag without the double quotes HTTP puts around it: ``"0x8DC…"`` and ``0x8DC…`` name the
    same version (the SDK keeps the quotes, callers may copy either form)."""
    return value.strip('"')


# Visible ASCII, optionally in double quotes (stored without them).
SourceEtag = Annotated[
    str, Field(min_length=1, max_length=258, pattern=r'^"?[!#-~]{1,256}"?$'), AfterValidator(unquoted_etag)
]


def collection_id_for(blob_name: str) -> str:
    """The default collection id of a source blob; always satisfies the collection id rule, and two
    different blob names never get the same id.

    ``name.tif`` in the container's root, with ``name`` itself a valid id, gives ``name``. Any other
    name (a folder, upper case, spaces, non-ASCII, another extension, too long) is lossy when
    slugged, so the slug (ASCII, lowercase, other characters as '-', at most 115 characters) gets
    '-' and 12 hex digits of the name's SHA-256: ``a/b.tif`` → ``a-b-<hash>``, ``a-b.tif`` → ``a-b``.
    A plain id never ends like a hashed one (such a name is hashed too), so the two kinds never meet.
    """
    if blob_name.endswith(".tif"):
        stem = blob_name.removesuffix(".tif")
        if collection_id_problem(stem) is None and not _HASHED.search(stem):
            return stem
    ascii_name = unicodedata.normalize("NFKD", _EXTENSION.sub("", blob_name)).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_.-]+", "-", ascii_name.lower())
    slug = re.sub(r"\.{2,}", ".", re.sub(r"-{2,}", "-", slug)).strip("-._")
    slug = slug[: MAX_COLLECTION_ID_LENGTH - COLLECTION_ID_HASH_DIGITS - 1].rstrip("-._") or "raster"
    digest = hashlib.sha256(blob_name.encode("utf-8", "surrogatepass")).hexdigest()[:COLLECTION_ID_HASH_DIGITS]
    return f"{slug}-{digest}"


class ProcessRasterParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    container: ContainerName = Field(default="bronze", description="Container holding the source GeoTIFF.")
    blob_name: BlobPath = Field(description="Path of the source GeoTIFF in the container (no URL, no '..').")
    output_container: ContainerName = Field(default="silver", description="Container for COGs and STAC.")
    collection_id: CollectionId | None = Field(
        default=None,
        description="STAC collection id: 1-128 characters of a-z, 0-9, '.', '_' and '-', starting with a letter "
        "or digit, no '..', not ending in '.'. Default derived from the blob name: dem.tif → dem; any other "
        "name → a slug plus 12 hex digits of its SHA-256 (terrain/dem.tif → terrain-dem-<hash>).",
    )
    compression: Compression = Field(
        default="deflate", description="COG compression; jpeg/webp only for uint8 RGB(A) (jpeg also 1 band)."
    )
    overview_resampling: OverviewResampling | None = Field(
        default=None, description="Overview resampling; default mode for paletted/categorical, average otherwise."
    )
    tile_size: int | None = Field(
        default=None,
        ge=COG_BLOCK_SIZE,
        le=65536,
        multiple_of=COG_BLOCK_SIZE,
        description="Side of the tiles the source is cut into, in pixels (a multiple of 512); must fit the "
        "per-task memory budget. Default: one tile when the source fits the budget, else the largest that fits.",
    )
    datetime: AwareDatetime | None = Field(
        default=None,
        description="STAC item datetime (ISO 8601 with offset). Default: the TIFF's DateTime tag, else the job's time.",
    )
    assume_crs: str | None = Field(
        default=None,
        min_length=1,
        max_length=20000,
        description=f"CRS for a source without one: {FORMS}. Stored resolved (the code, or canonical WKT2).",
    )
    source_etag: SourceEtag | None = Field(
        default=None,
        description="ETag of the version of the source the job converts, part of the job id: recorded at "
        "submission from the blob as it is then (null when it does not exist), so a replaced source is a new "
        "job. Pass it to pin a version: another current etag is a 409. A source replaced after submission "
        "fails the job.",
    )

    @field_validator("assume_crs")
    @classmethod
    def _known_crs(cls, value: str | None) -> str | None:
        # Resolved from the text alone (no URL, file or PROJ string); the canonical form is what the
        # job stores, so re-validating stored parameters later gives the same CRS.
        if value is None:
            return None
        try:
            return canonical_crs_text(value)
        except CrsInputError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _derive_collection_id(self) -> ProcessRasterParameters:
        if self.collection_id is None:
            self.collection_id = collection_id_for(self.blob_name)
        return self

    @property
    def source(self) -> BlobRef:
        return BlobRef(self.container, self.blob_name)

    @property
    def resolved_collection_id(self) -> str:
        return self.collection_id or collection_id_for(self.blob_name)
