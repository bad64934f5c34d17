"""The OpenAPI documents of both HTTP APIs: checked against the apps' routes, and
the apps fuzzed with them (schemathesis, in-process: no broker, no port)."""

from __future__ import annotations

import re
from collections import defaultdict

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.definitions import OPENAPI_31

from catmqtt import openapi
from catmqtt.publisher.app import create_app as create_publisher_app
from catmqtt.subscriber.throttle import Logins

from test_fuzz import DATASETS
from test_views import node, node_with_accounts  # noqa: F401 - the subscriber fixtures

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


@pytest.mark.parametrize("role", ["publisher", "subscriber"])
def test_documents_are_openapi_3_1(role):
    # The OpenAPI 3.1 schema that schemathesis checks documents with.
    jsonschema_rs.validator_for(OPENAPI_31).validate(getattr(openapi, role)())


# What the fuzzing checks: no 5xx, every answer as documented (status, media
# type, headers, JSON body), bad input refused with a 4xx, an undocumented
# method with a 405. Data that fit the documents and data that do not.
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_headers_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            "unsupported_method": {"enabled": True},
            "negative_data_rejection": {"enabled": True, "expected-statuses": ["4xx"]},
        },
        "generation": {"mode": "all"},
    }
)
# Bounded and the same on every run: 15 generated requests an operation (and
# schemathesis's examples and coverage cases), nothing saved between runs.
FUZZ = settings(
    max_examples=15,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
# Loaded from the documents, each app given at the call: schemathesis's
# from_fixture, which would load them from an app, fails under pytest 9 (it
# sets the item's _nodeid). The documents served are these (see above).
# Each operation gets a subscriber of its own (`node`), so that unsubscribing
# is fuzzed without starving the others.
PUBLISHER = schemathesis.openapi.from_dict(openapi.publisher(), config=CONFIG)
SUBSCRIBER = schemathesis.openapi.from_dict(openapi.subscriber(), config=CONFIG)
# Path parameters that name what the sample root holds: half the requests
# get past the lookup of their dataset.
REAL = {
    "path": DATASETS,
    "fullpath": ["foo", "bar", *(f"foo/{path}" for path in DATASETS)],
    "name": ["foo", "bar"],
    "directory": ["dir1", "dir2", "dir1/ds-2d.b2nd"],
    "filename": ["app.js", "page.css", "favicon.svg", "index.html", "../app.py"],
}


def before_generate_path_parameters(context, strategy):
    names = re.findall(r"{(\w+)}", context.operation.path)
    real = st.fixed_dictionaries({name: st.sampled_from(REAL[name]) for name in names})
    return st.one_of(strategy, real)


PUBLISHER.hook(before_generate_path_parameters)
SUBSCRIBER.hook(before_generate_path_parameters)


@PUBLISHER.parametrize()
@FUZZ
def test_publisher_answers_as_documented(case, apps):
    case.call_and_validate(app=apps["publisher"])


@SUBSCRIBER.parametrize()
@FUZZ
def test_subscriber_answers_as_documented(case, apps):
    case.call_and_validate(app=apps["subscriber"])


@SUBSCRIBER.parametrize()
@FUZZ
def test_subscriber_with_accounts_answers_as_documented(case, node_with_accounts):  # noqa: F811
    app = node_with_accounts.app
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {node_with_accounts.token}"})
    case.call_and_validate(app=app)


@pytest.mark.parametrize("path", ["/auth/login", "/auth/jwt/login"])
@pytest.mark.parametrize("status", [429, 503])
def test_refused_logins_answer_as_documented(node_with_accounts, path, status):  # noqa: F811
    app = node_with_accounts.app
    # One failure is too many; or no login may be checked.
    app.config["CATMQTT_GUARD"].logins = Logins(1, 1, 900, verifying=1 if status == 429 else 0)
    media_type = "application/json" if path == "/auth/login" else "application/x-www-form-urlencoded"
    login = SUBSCRIBER[path]["POST"]
    if status == 429:
        wrong = login.Case(body={"username": "admin", "password": "wrong"}, media_type=media_type)
        assert wrong.call_and_validate(app=app).status_code == 401
    case = login.Case(body={"username": "admin", "password": "a password"}, media_type=media_type)
    # A 503 is documented, but is a server's error all the same.
    response = case.call_and_validate(app=app, excluded_checks=[schemathesis.checks.not_a_server_error])
    assert response.status_code == status and response.headers["retry-after"][0].isdigit()
