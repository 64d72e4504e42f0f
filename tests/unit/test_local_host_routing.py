"""Route templates, precedence, 404/405 resolution for the local host's HTTP triggers."""

from __future__ import annotations

import pytest

from local_host.routing import Route, RouteTable, RouteTemplate, RouteTemplateError, split_path


def match(template: str, path: str) -> dict[str, str] | None:
    segments = split_path(path)
    assert segments is not None
    return RouteTemplate.parse(template).match(segments)


def table(*routes: tuple[str, list[str] | None, str]) -> RouteTable[str]:
    return RouteTable(
        Route(RouteTemplate.parse(t), frozenset(m) if m is not None else None, name) for t, m, name in routes
    )


def test_literal_and_parameters() -> None:
    assert match("jobs/{job_id}", "/jobs/abc") == {"job_id": "abc"}
    assert match("jobs/{job_id}/tasks", "jobs/abc/tasks/") == {"job_id": "abc"}
    assert match("jobs/{job_id}", "/jobs") is None
    assert match("jobs/{job_id}", "/jobs/a/b") is None
    assert match("jobs", "/JOBS") == {}


def test_values_are_percent_decoded_per_segment() -> None:
    assert match("files/{name}", "/files/a%20b%2Fc") == {"name": "a b/c"}


def test_optional_last_segment() -> None:
    assert match("items/{id}/{name?}", "/items/1") == {"id": "1"}
    assert match("items/{id}/{name?}", "/items/1/bob") == {"id": "1", "name": "bob"}
    assert match("items/{id=7}", "/items") == {"id": "7"}


def test_catch_all() -> None:
    assert match("files/{*rest}", "/files/a/b/c.txt") == {"rest": "a/b/c.txt"}
    assert match("files/{*rest}", "/files") == {}
    assert match("files/{**rest}", "/files/x") == {"rest": "x"}


@pytest.mark.parametrize(
    ("template", "good", "bad"),
    [
        ("n/{v:int}", "-12", "1.5"),
        ("n/{v:int}", "2147483647", "2147483648"),
        ("n/{v:long}", "2147483648", "x"),
        ("n/{v:alpha}", "abcXYZ", "abc1"),
        ("n/{v:guid}", "6f9619ff-8b86-d011-b42d-00cf4fc964ff", "6f9619ff"),
        ("n/{v:bool}", "True", "yes"),
        ("n/{v:decimal}", "1.25", "abc"),
        ("n/{v:minlength(3)}", "abc", "ab"),
        ("n/{v:maxlength(2)}", "ab", "abc"),
        ("n/{v:length(2,3)}", "abc", "abcd"),
        ("n/{v:min(5)}", "5", "4"),
        ("n/{v:max(5)}", "5", "6"),
        ("n/{v:range(1,3)}", "2", "4"),
        ("n/{v:int:min(10)}", "10", "9"),
    ],
)
def test_constraints(template: str, good: str, bad: str) -> None:
    assert match(template, f"/n/{good}") == {"v": good}
    assert match(template, f"/n/{bad}") is None


def test_complex_segment() -> None:
    assert match("tiles/{z:int}/{name}.{ext}", "/tiles/3/scene.tif") == {"z": "3", "name": "scene", "ext": "tif"}
    assert match("tiles/{z:int}/{name}.{ext}", "/tiles/3/scene") is None


@pytest.mark.parametrize(
    "template",
    [
        "a/{*rest}/b",
        "a/{x?}/b",
        "a/{x}/{x}",
        "a/{x:unknown}",
        "a/{x:range(1)}",
        "a//b",
        "a/{1x}",
        "a/{x}}",
    ],
)
def test_invalid_templates(template: str) -> None:
    with pytest.raises(RouteTemplateError):
        RouteTemplate.parse(template)


def test_literal_beats_parameter_regardless_of_registration_order() -> None:
    routes = table(("jobs/{job_id}", ["GET"], "get_job"), ("jobs/stats", ["GET"], "stats"))
    result = routes.resolve("GET", ["jobs", "stats"])
    assert result.match is not None and result.match.route.target == "stats"
    result = routes.resolve("GET", ["jobs", "j-1"])
    assert result.match is not None and result.match.route.target == "get_job"
    assert result.match.values == {"job_id": "j-1"}


def test_precedence_constrained_over_plain_over_optional_over_catch_all() -> None:
    routes = table(
        ("x/{*rest}", None, "catch_all"),
        ("x/{v?}", None, "optional"),
        ("x/{v}", None, "plain"),
        ("x/{v:int}", None, "constrained"),
    )

    def target(*segments: str) -> str:
        result = routes.resolve("GET", list(segments))
        assert result.match is not None
        return result.match.route.target

    assert target("x", "5") == "constrained"
    assert target("x", "a") == "plain"
    assert target("x") == "optional"
    assert target("x", "a", "b") == "catch_all"


def test_same_template_different_methods() -> None:
    routes = table(("jobs/{job_type}", ["POST"], "submit"), ("jobs/{job_id}", ["GET"], "get"))
    post = routes.resolve("POST", ["jobs", "hello"])
    get = routes.resolve("get", ["jobs", "hello"])
    assert post.match is not None and post.match.route.target == "submit"
    assert get.match is not None and get.match.route.target == "get"


def test_method_mismatch_reports_allowed_methods() -> None:
    routes = table(("jobs/{job_id}", ["GET"], "get"), ("jobs/{job_type}", ["POST", "PUT"], "submit"))
    result = routes.resolve("DELETE", ["jobs", "x"])
    assert result.match is None
    assert result.allowed == {"GET", "POST", "PUT"}


def test_no_match() -> None:
    result = table(("jobs", None, "list")).resolve("GET", ["nope"])
    assert result.match is None and not result.allowed


def test_methods_none_allows_everything() -> None:
    result = table(("any", None, "any")).resolve("PATCH", ["any"])
    assert result.match is not None


def test_split_path() -> None:
    assert split_path("/") == []
    assert split_path("/a/b/") == ["a", "b"]
    assert split_path("/a//b") is None
