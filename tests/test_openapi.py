"""The OpenAPI documents of both HTTP APIs, checked against the apps' routes."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from catmqtt import openapi
from catmqtt.publisher.app import create_app as create_publisher_app

from test_views import node  # noqa: F401 - the subscriber fixture

# Flask's converters, <path:fullpath>, as OpenAPI writes them, {fullpath}.
_VARIABLE = re.compile(r"<(?:\w+:)?(\w+)>")


def routes(app) -> dict[str, set[str]]:
    """Return the methods of each route of `app`, its path as OpenAPI writes it;
    HEAD and OPTIONS, which Flask adds to every route, left out."""
    found: dict[str, set[str]] = defaultdict(set)
    for rule in app.url_map.iter_rules():
        found[_VARIABLE.sub(r"{\1}", rule.rule)] |= {m.lower() for m in rule.methods - {"HEAD", "OPTIONS"}}
    return dict(found)


def documented(document: dict) -> dict[str, set[str]]:
    return {path: set(operations) for path, operations in document["paths"].items()}


@pytest.fixture
def apps(node):  # noqa: F811
    return {"publisher": create_publisher_app(node.root), "subscriber": node.app}


@pytest.mark.parametrize("role", ["publisher", "subscriber"])
def test_every_route_is_documented_and_nothing_else(apps, role):
    app = apps[role]
    document = app.test_client().get("/api/openapi.json").get_json()
    assert document == getattr(openapi, role)()
    assert documented(document) == routes(app)


@pytest.mark.parametrize("role", ["publisher", "subscriber"])
def test_path_parameters_are_those_of_the_paths(role):
    document = getattr(openapi, role)()
    parameters = document["components"]["parameters"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            used = [parameters[ref["$ref"].rpartition("/")[2]] for ref in operation.get("parameters", [])]
            named = {p["name"] for p in used if p["in"] == "path"}
            assert named == set(re.findall(r"{(\w+)}", path)), (method, path)


@pytest.mark.parametrize("role, path", [("publisher", "README.md"), ("subscriber", "foo/README.md")])
def test_downloads_are_octet_streams(apps, role, path):
    # The publisher's were typed by the file's name (text/markdown here), as its document did not say.
    response = apps[role].test_client().get(f"/api/download/{path}")
    assert response.status_code == 200 and response.mimetype == "application/octet-stream"
    response.close()
