"""The collection id rule (services/stac/builder.COLLECTION_ID_RULE): explicit ids are checked at
submission, and the default derived from any acceptable blob name always satisfies it, with
distinct names never sharing an id."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controllers.catalog_container import CatalogContainerParameters
from controllers.process_raster_parameters import ProcessRasterParameters, collection_id_for
from schemas.blob_names import blob_path_problem
from services.engine.job_service import field_errors
from services.stac.builder import COLLECTION_ID_PATTERN, collection_id_problem

RULE = re.compile(COLLECTION_ID_PATTERN)

# Blob names as users have them: unicode, spaces, dots, upper case, look-alike separators, long runs.
_characters = st.one_of(
    st.sampled_from(list("abcxyzABCXYZ0189._- ~()[]+,;=@!$&'ÄäÖéñß日本語—·")),
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")),
)
_segment = st.text(_characters, min_size=1, max_size=40)
_suffix = st.sampled_from(["", ".tif", ".TIF", ".tiff", ".tif.tif", ".", ".x"])
blob_names = st.builds(
    lambda segments, suffix: "/".join(segments) + suffix, st.lists(_segment, min_size=1, max_size=4), _suffix
).filter(lambda name: blob_path_problem(name) is None)
long_names = st.builds(
    lambda n, tail: "x" * n + tail + ".tif", st.integers(100, 1000), st.text("ab/-.", max_size=5)
).filter(lambda name: blob_path_problem(name) is None)


def satisfies_rule(value: str) -> bool:
    return collection_id_problem(value) is None and RULE.fullmatch(value) is not None and len(value) <= 128


@settings(max_examples=600, deadline=None)
@given(st.one_of(blob_names, long_names))
def test_the_derived_id_always_satisfies_the_rule(name: str) -> None:
    derived = collection_id_for(name)
    assert satisfies_rule(derived), (name, derived)
    assert ".." not in derived and not derived.endswith(".") and derived == derived.lower()
    # …and so is accepted when given back explicitly (a stored job re-validates the same way).
    assert ProcessRasterParameters.model_validate({"blob_name": name}).collection_id == derived


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(blob_names, long_names), min_size=2, max_size=8, unique=True))
def test_distinct_blob_names_get_distinct_ids(names: list[str]) -> None:
    assert len({collection_id_for(name) for name in names}) == len(names), names


@pytest.mark.parametrize(
    "names",
    [
        ("a/b.tif", "a-b.tif", "a_b.tif", "A/B.tif", "a b.tif"),  # the collision the issue reports
        ("a.tif", "a.tiff", "a.TIF", "A.tif", "a"),  # extensions and case
        ("x" * 200 + "1.tif", "x" * 200 + "2.tif"),  # alike in the first 115 characters
        ("raster-0123456789ab.tif", "日本.tif", "中文.tif"),  # a hashed-looking name; all-non-ASCII names
        ("a..b.tif", "a.b.tif", "a...b.tif"),
    ],
)
def test_names_that_slug_alike_do_not_collide(names: tuple[str, ...]) -> None:
    ids = [collection_id_for(name) for name in names]
    assert len(set(ids)) == len(ids), ids
    assert all(satisfies_rule(i) for i in ids)


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        ("dem.tif", "dem"),  # a root-level .tif whose stem is already a valid id: kept as it is
        ("dem-2024.v2.tif", "dem-2024.v2"),
        ("a-b.tif", "a-b"),
    ],
)
def test_a_lossless_name_keeps_its_plain_id(blob: str, expected: str) -> None:
    assert collection_id_for(blob) == expected


@pytest.mark.parametrize(
    ("blob", "slug"),
    [
        ("a/b.tif", "a-b"),
        ("Surveys 2024/DEM_v2.tif", "surveys-2024-dem_v2"),
        ("Ünïcode Fïlé.TIFF", "unicode-file"),
        ("日本.tif", "raster"),
        ("a..b.tif", "a.b"),
    ],
)
def test_a_lossy_name_gets_its_slug_and_a_hash(blob: str, slug: str) -> None:
    assert re.fullmatch(rf"{re.escape(slug)}-[0-9a-f]{{12}}", collection_id_for(blob))


def test_a_very_long_name_is_cut_to_the_limit() -> None:
    derived = collection_id_for("d/" + "x" * 1000 + ".tif")
    assert len(derived) == 128 and satisfies_rule(derived)


def errors(model: Any, raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(raw)
    return {error["field"]: error["message"] for error in field_errors(caught.value)}


@pytest.mark.parametrize(
    "bad",
    ["", "Dem", "-dem", ".dem", "dem.", "a..b", "a/b", "dem v2", "dém", "x" * 129, "a%2e", "a~b", "..", "_x"],
)
@pytest.mark.parametrize(
    ("model", "base"), [(ProcessRasterParameters, {"blob_name": "a.tif"}), (CatalogContainerParameters, {})]
)
def test_an_explicit_id_breaking_the_rule_is_a_400_naming_the_field_and_the_rule(
    bad: str, model: Any, base: dict[str, Any]
) -> None:
    found = errors(model, {**base, "collection_id": bad})
    assert set(found) == {"collection_id"}, found
    assert "1-128 characters of a-z, 0-9, '.', '_' and '-'" in found["collection_id"]
    assert "no '..'" in found["collection_id"] and "not ending in '.'" in found["collection_id"]


@pytest.mark.parametrize("good", ["a", "0", "dem-2024.v2", "a_b-c.d", "x" * 128, "a.-b"])
def test_ids_within_the_rule_are_accepted(good: str) -> None:
    assert ProcessRasterParameters.model_validate({"blob_name": "a.tif", "collection_id": good}).collection_id == good
    assert CatalogContainerParameters.model_validate({"collection_id": good}).collection_id == good


def test_the_json_schema_states_the_rule_as_a_pattern() -> None:
    schema = ProcessRasterParameters.model_json_schema()["properties"]["collection_id"]
    [string] = [branch for branch in schema["anyOf"] if branch["type"] == "string"]
    assert (string["pattern"], string["maxLength"]) == (COLLECTION_ID_PATTERN, 128)
    schema = CatalogContainerParameters.model_json_schema()["properties"]["collection_id"]
    assert schema["pattern"] == COLLECTION_ID_PATTERN
