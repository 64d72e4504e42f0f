"""``python -m tests.support.offline_stac_api_validator ARGS``: stac-api-validator with every JSON
schema read from the project's bundled copies (services/stac/schemas/, see its README), never
fetched: the tests run without internet access. An unknown schema URL is an error, not a fetch."""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).resolve().parents[2] / "services" / "stac" / "schemas"
URL_PREFIXES = {
    "https://schemas.stacspec.org/v1.1.0/": "v1.1.0/",
    "https://stac-extensions.github.io/projection/v2.0.0/": "extensions/projection/v2.0.0/",
    "https://stac-extensions.github.io/raster/v1.1.0/": "extensions/raster/v1.1.0/",
    "https://stac-extensions.github.io/file/v2.1.0/": "extensions/file/v2.1.0/",
    "https://geojson.org/schema/": "geojson/",
    "https://proj.org/schemas/v0.7/": "proj/v0.7/",
}


@cache
def local_schema(url: str) -> dict[str, Any]:
    for prefix, folder in URL_PREFIXES.items():
        if url.startswith(prefix):
            document: dict[str, Any] = json.loads((SCHEMAS / folder / url.removeprefix(prefix)).read_text("utf-8"))
            return document
    raise ValueError(f"no bundled schema for {url} (the test does not fetch schemas)")


def main() -> None:
    from stac_validator import utilities, validate

    utilities.fetch_and_parse_schema = local_schema
    validate.fetch_and_parse_schema = local_schema
    from stac_api_validator.__main__ import main as validator

    sys.argv[0] = "stac-api-validator"
    validator()


if __name__ == "__main__":
    main()
