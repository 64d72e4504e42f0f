"""process_raster's parameters: the request model, the collection id rule and the source etag."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.blob_names import BlobPath, ContainerName
from services.raster.cog import Compression, OverviewResampling
from services.raster.crs import FORMS, CrsInputError, canonical_crs_text
from services.raster.pipeline import BlobRef
from services.raster.tiling import COG_BLOCK_SIZE
from services.raster.warp import WEB_MERCATOR_CODE, WarpMode, WarpOptions, WarpResampling
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


def collection_id_for(blob_name: str, options_key: str | None = None) -> str:
    """The default collection id of a source blob converted with output options ``options_key``
    (``output_options_key``; None: the defaults); always satisfies the collection id rule, and two
    different (blob name, options) never get the same id. With options other than the defaults the
    id is always the hashed form, the hash over the name and the options.

    ``name.tif`` in the container's root, with ``name`` itself a valid id, gives ``name``. Any other
    name (a folder, upper case, spaces, non-ASCII, another extension, too long) is lossy when
    slugged, so the slug (ASCII, lowercase, other characters as '-', at most 115 characters) gets
    '-' and 12 hex digits of the name's SHA-256: ``a/b.tif`` → ``a-b-<hash>``, ``a-b.tif`` → ``a-b``.
    A plain id never ends like a hashed one (such a name is hashed too), so the two kinds never meet.
    """
    if blob_name.endswith(".tif") and options_key is None:
        stem = blob_name.removesuffix(".tif")
        if collection_id_problem(stem) is None and not _HASHED.search(stem):
            return stem
    ascii_name = unicodedata.normalize("NFKD", _EXTENSION.sub("", blob_name)).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9_.-]+", "-", ascii_name.lower())
    slug = re.sub(r"\.{2,}", ".", re.sub(r"-{2,}", "-", slug)).strip("-._")
    slug = slug[: MAX_COLLECTION_ID_LENGTH - COLLECTION_ID_HASH_DIGITS - 1].rstrip("-._") or "raster"
    hashed = blob_name if options_key is None else f"{blob_name}\0{options_key}"
    digest = hashlib.sha256(hashed.encode("utf-8", "surrogatepass")).hexdigest()[:COLLECTION_ID_HASH_DIGITS]
    return f"{slug}-{digest}"


# Parameters that do not change the COG files: the source's path (in the output path itself), where
# and under which collection they go, the source version (a replaced source writes the same
# outputs, superseding the older job) and the STAC datetime. Every other parameter with a value
# other than its default is an output option (so a new option is one automatically).
OUTPUT_NEUTRAL_FIELDS = frozenset(
    {"blob_name", "output_container", "collection_id", "source_etag", "datetime", "pgstac"}
)
OUTPUT_KEY_DIGITS = 12


def output_options(params: BaseModel) -> dict[str, Any]:
    """The output-affecting parameters that differ from their defaults (JSON values)."""
    dumped = params.model_dump(mode="json", exclude_defaults=True)
    return {key: value for key, value in sorted(dumped.items()) if key not in OUTPUT_NEUTRAL_FIELDS}


def options_key(options: dict[str, Any]) -> str | None:
    """12 hex digits of the SHA-256 of ``options`` (canonical JSON); None for no options."""
    if not options:
        return None
    canonical = json.dumps(options, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:OUTPUT_KEY_DIGITS]


class RasterOutputOptions(BaseModel):
    """The conversion options process_raster and process_rasters share: their fields and checks."""

    model_config = ConfigDict(extra="forbid")

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
    warp: WarpMode = Field(
        default="auto",
        description='"auto": a source with a rotated or sheared geotransform, or placed by ground control points '
        "or RPCs only, is warped to a north-up grid (the one gdalwarp chooses by default), as is one whose CRS "
        'is not target_crs or with web_optimized; "never": such a source fails the job instead.',
    )
    target_crs: str | None = Field(
        default=None,
        min_length=1,
        max_length=20000,
        description=f"CRS of the output ({FORMS}); a source in another CRS is warped to it. Default: the "
        "source's (for RPCs, EPSG:4326). Stored resolved (the code, or canonical WKT2).",
    )
    web_optimized: bool = Field(
        default=False,
        description="Warp to EPSG:3857 aligned to the GoogleMapsCompatible tile matrix (as rio-cogeo's "
        "web-optimized COGs): the pixel size of the closest finer zoom level, whole 256-px tiles.",
    )
    resampling: WarpResampling | None = Field(
        default=None,
        description="Resampling when warping; default nearest for paletted/categorical, bilinear otherwise.",
    )

    @field_validator("assume_crs", "target_crs")
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

    @field_validator("target_crs", "web_optimized")
    @classmethod
    def _needs_warping(cls, value: str | bool | None, info: ValidationInfo) -> str | bool | None:
        if value and info.data.get("warp") == "never":
            raise ValueError(f'{info.field_name} needs warping, and warp is "never"')
        target = info.data.get("target_crs")
        if info.field_name == "web_optimized" and value and target and target != WEB_MERCATOR_CODE:
            raise ValueError(f"web_optimized output is in {WEB_MERCATOR_CODE}; target_crs is {target}")
        return value

    @property
    def warp_options(self) -> WarpOptions:
        return WarpOptions(self.warp, self.target_crs, self.web_optimized, self.resampling)


class ProcessRasterParameters(RasterOutputOptions):
    model_config = ConfigDict(extra="forbid")

    container: ContainerName = Field(default="bronze", description="Container holding the source GeoTIFF.")
    blob_name: BlobPath = Field(description="Path of the source GeoTIFF in the container (no URL, no '..').")
    output_container: ContainerName = Field(default="silver", description="Container for COGs and STAC.")
    collection_id: CollectionId | None = Field(
        default=None,
        description="STAC collection id: 1-128 characters of a-z, 0-9, '.', '_' and '-', starting with a letter "
        "or digit, no '..', not ending in '.'. Default derived from the blob name: dem.tif → dem; any other "
        "name → a slug plus 12 hex digits of its SHA-256 (terrain/dem.tif → terrain-dem-<hash>); with output "
        "options other than the defaults always the hashed form, over the name and the options. A collection id "
        "belongs to one source with one set of output options: naming another's is a 409.",
    )
    pgstac: bool = Field(
        default=False,
        description="Also load the output catalog into pgstac (the STAC API) as the last step, replacing what "
        "pgstac held of the collection. Needs PGSTAC_ENABLED.",
    )
    source_etag: SourceEtag | None = Field(
        default=None,
        description="ETag of the version of the source the job converts, part of the job id: recorded at "
        "submission from the blob as it is then (null when it does not exist), so a replaced source is a new "
        "job. Pass it to pin a version: another current etag is a 409. A source replaced after submission "
        "fails the job.",
    )

    @model_validator(mode="after")
    def _derive_collection_id(self) -> ProcessRasterParameters:
        if self.collection_id is None:
            self.collection_id = self.default_collection_id
        return self

    @property
    def options_key(self) -> str | None:
        """The hash of the output options (``output_options``), None for the defaults."""
        return options_key(output_options(self))

    @property
    def default_collection_id(self) -> str:
        return collection_id_for(self.blob_name, self.options_key)

    @property
    def output_key(self) -> str | None:
        """What the COG paths add to the source path (pipeline.output_prefix): the output options and
        an explicit collection id, hashed; None for default options and the default collection.
        Output paths are thus injective in (source, options, collection): one collection's files."""
        options = output_options(self)
        if self.collection_id is not None and self.collection_id != self.default_collection_id:
            options["collection_id"] = self.collection_id
        return options_key(options)

    @property
    def source(self) -> BlobRef:
        return BlobRef(self.container, self.blob_name)

    @property
    def resolved_collection_id(self) -> str:
        return self.collection_id or self.default_collection_id
