"""Random requests to both HTTP APIs, serving the sample root: never a 5xx, every error JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import MOSQUITTO, Broker, start_publisher, start_subscriber

# Deterministic and bounded: the same examples on every run, nothing saved between runs.
FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DATASETS = [
    "README.md",
    "ds-hello.b2frame",
    "ds-1d.b2nd",
    "ds-1d-b.b2nd",
    "ds-1d-fields.b2nd",
    "ds-2d-fields.b2nd",
    "ds-sc-attr.b2nd",
    "dir1/ds-2d.b2nd",
    "dir1/ds-3d.b2nd",
    "dir2/ds-4d.b2nd",
]
# Past 64 bits, past 20 digits, past Python's 4300 digits for int().
HUGE = ["9" * 20, str(2**63), str(2**64), str(10**30), "9" * 5000, "0" * 5000 + "1"]


def numbers() -> st.SearchStrategy[str]:
    """Integers as a request may write them: small, negative, huge, padded, not quite integers."""
    return st.one_of(
        st.integers(-20, 1100).map(str),
        st.sampled_from(HUGE + ["-" + n for n in HUGE]),
        st.sampled_from(["", " 1", "+2", "1_0", "\u0663", "1e3", "0x10", "--1", "1.5", "nan"]),
    )


def junk() -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


def path_segments() -> st.SearchStrategy[str]:
    """Pieces of a path: real names, traversal, percent-encoding, unicode, numbers."""
    return st.one_of(
        st.sampled_from(["foo", "bar", "dir1", "dir2", *DATASETS]),
        st.sampled_from(["..", ".", "", "%2e%2e", "%2F", "..%2f..", "%00", "%ff", "~", "*", "#", "?"]),
        st.sampled_from(["etc/passwd", "cache.sqlite", ".catmqtt-state", "tmp", "..\\..\\x"]),
        numbers(),
        junk(),
    )


def paths() -> st.SearchStrategy[str]:
    return st.lists(path_segments(), min_size=0, max_size=4).map("/".join)


def optional(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), strategy)


def slices() -> st.SearchStrategy[str]:
    """Slices of one to five axes, mostly well formed, their numbers anything."""
    item = st.one_of(
        numbers(),
        st.tuples(optional(numbers()), optional(numbers())).map(":".join),
        st.tuples(optional(numbers()), optional(numbers()), optional(numbers())).map(":".join),
        st.sampled_from(["...", ":", "::-1", "[", "()"]),
        junk(),
    )
    return st.lists(item, max_size=5).map(",".join)


def indices() -> st.SearchStrategy[str]:
    """The `indices` of /api/fetch: JSON lists of per-axis entries, mostly well formed, or anything."""
    coords = st.one_of(
        st.integers(-1100, 1100),
        st.sampled_from([2**63, 2**64, -(2**64), 10**30, 1.5, True, "1", None]),
    )
    entry = st.one_of(
        coords,
        slices(),
        st.lists(coords, max_size=4),
        st.lists(st.lists(st.integers(-20, 20), max_size=3), max_size=3),
    )
    return st.one_of(st.lists(entry, max_size=5).map(json.dumps), junk())


def chunk_numbers() -> st.SearchStrategy[str]:
    """Chunk and block numbers: within the sample's datasets, or anything."""
    return st.one_of(st.integers(0, 12).map(str), numbers())


def chunk_ranges() -> st.SearchStrategy[str]:
    """``A-B`` or ``A`` (blocks), or anything."""
    return st.one_of(st.tuples(chunk_numbers(), chunk_numbers()).map("-".join), chunk_numbers(), junk())


def chunk_lists() -> st.SearchStrategy[str]:
    """``0-15,20`` (chunks), or anything."""
    return st.one_of(st.lists(chunk_ranges(), min_size=1, max_size=3).map(",".join), junk())


def header_value(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # What an HTTP header can carry: no line breaks, latin-1.
    return strategy.map(lambda v: v.encode("latin-1", "replace").decode("latin-1")).map(
        lambda v: v.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    )


def ranges() -> st.SearchStrategy[str]:
    return header_value(
        st.one_of(
            st.tuples(chunk_numbers(), chunk_numbers()).map(lambda t: f"bytes={t[0]}-{t[1]}"),
            numbers().map(lambda n: f"bytes={n}-"),
            numbers().map(lambda n: f"bytes=-{n}"),
            st.sampled_from(["bytes=0-1,5-6", "items=0-9", "bytes=", "bytes=9-3", "bytes=-0"]),
            junk(),
        )
    )


def accepts() -> st.SearchStrategy[str]:
    return header_value(
        st.one_of(
            st.sampled_from(["application/x-npy", "application/x-blosc2", "*/*", "text/html", "x/y;q=2"]),
            junk(),
        )
    )


def etags() -> st.SearchStrategy[str]:
    return header_value(st.one_of(st.sampled_from(['"x"', "*", 'W/"1"', '"', ""]), junk()))


def headers() -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries(
        {}, optional={"Range": ranges(), "Accept": accepts(), "If-None-Match": etags(), "If-Range": etags()}
    )


def queries() -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "slice": slices(),
            "slice_": slices(),
            "indices": indices(),
            "nchunk": chunk_numbers(),
            "nchunks": chunk_lists(),
            "blocks": chunk_ranges(),
            "etag": st.one_of(st.just("x"), junk()),
        },
    )


def requests_to(endpoints: list[str]) -> st.SearchStrategy[tuple[str, str, dict, dict]]:
    """(method, path, query, headers): anything, mostly GETs of the API's endpoints."""
    endpoint = st.one_of(st.sampled_from(endpoints), junk())
    path = st.tuples(endpoint, paths()).map(lambda t: f"/api/{t[0]}/{t[1]}".replace("//", "/"))
    method = st.sampled_from(["GET"] * 6 + ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"])
    # Sent as a browser would: what a URL cannot hold percent-encoded, "%" left as it is.
    url = st.one_of(path, st.just("/"), junk().map(lambda j: "/" + j)).map(lambda p: quote(p, safe="/%"))
    return st.tuples(method, url, queries(), headers())


# The arguments (required, optional) and headers each endpoint reads.
ENDPOINTS = {
    "fetch": (
        {},
        {"slice": slices(), "slice_": slices(), "indices": indices()},
        {"Accept": accepts(), "Range": ranges()},
    ),
    "chunk": (
        {"nchunk": chunk_numbers()},
        {"blocks": chunk_ranges()},
        {"Range": ranges(), "If-Range": etags()},
    ),
    "chunks": ({"nchunks": chunk_lists()}, {"etag": st.just("x")}, {}),
    "info": ({}, {}, {"If-None-Match": etags()}),
    "manifest": ({}, {}, {}),
    "download": ({}, {}, {"Range": ranges()}),
}


def dataset_requests(root: str, endpoint: str) -> st.SearchStrategy[tuple[str, str, dict, dict]]:
    """GETs of `endpoint` for the sample's datasets (under `root`), with the arguments
    it reads, well formed or not: the deepest code paths."""
    query, extra, headers = ENDPOINTS[endpoint]
    return st.tuples(
        st.just("GET"),
        st.sampled_from(DATASETS).map(lambda p: f"/api/{endpoint}/{root}{p}"),
        st.fixed_dictionaries(query, optional=extra),
        st.fixed_dictionaries({}, optional=headers),
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory, sample_root) -> Iterator[tuple]:
    """A broker, a publisher of the sample root and a subscriber following it, all reachable."""
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = Broker("mosquitto" if MOSQUITTO else "amqtt", tmp).start()
    pub = start_publisher(broker, tmp / "pub", sample_root)
    sub = start_subscriber(broker, tmp / "sub")
    sub.follower.subscribe("foo")
    yield pub, sub
    sub.stop()
    pub.stop()
    broker.stop()


def check(client, method: str, path: str, query: dict, headers: dict) -> None:
    response = client.open(path, method=method, query_string=query, headers=headers)
    status = response.status_code
    assert status < 500, (method, path, query, headers, response.get_data()[:500])
    if status >= 400 and method != "HEAD":
        error = response.get_json(silent=True)
        assert isinstance(error, dict), (method, path, query, headers, response.get_data()[:500])
        assert error["status"] == status and isinstance(error["error"], str) and error["error"]
    # Every body read through: an exception while streaming fails the test too.
    response.get_data()
    response.close()


@FUZZ
@given(request=requests_to(["list", "info", "chunk", "manifest", "download"]))
def test_publisher_api(services, request):
    pub, _ = services
    check(pub.app.test_client(), *request)


@FUZZ
@given(
    request=requests_to(
        ["roots", "subscribe", "list", "info", "fetch", "chunk", "chunks", "download", "stats"]
    )
)
def test_subscriber_api(services, request):
    _, sub = services
    check(sub.app.test_client(), *request)


@pytest.mark.parametrize("endpoint", ["fetch", "chunk", "chunks", "info", "download"])
@FUZZ
@given(data=st.data())
def test_subscriber_datasets(services, endpoint, data):
    _, sub = services
    check(sub.app.test_client(), *data.draw(dataset_requests("foo/", endpoint)))


@pytest.mark.parametrize("endpoint", ["chunk", "info", "manifest", "download"])
@FUZZ
@given(data=st.data())
def test_publisher_datasets(services, endpoint, data):
    pub, _ = services
    check(pub.app.test_client(), *data.draw(dataset_requests("", endpoint)))


def bodies() -> st.SearchStrategy[bytes]:
    """Bodies of POST /api/fetch: JSON objects of its arguments, other JSON, or anything."""
    values = st.one_of(slices(), indices(), st.integers(), st.none(), st.lists(st.integers(), max_size=3))
    arguments = st.fixed_dictionaries({}, optional={"slice_": values, "slice": values, "indices": values})
    return st.one_of(
        arguments.map(json.dumps),
        st.sampled_from(["[]", "null", "1", '"0:10"', "{", "[" * 5000, '{"slice_": "' + "9" * 5000 + '"}']),
        junk(),
    ).map(str.encode)


@FUZZ
@given(path=st.sampled_from(DATASETS), body=bodies(), accept=accepts())
def test_subscriber_fetch_posts(services, path, body, accept):
    _, sub = services
    response = sub.app.test_client().post(f"/api/fetch/foo/{path}", data=body, headers={"Accept": accept})
    status = response.status_code
    assert status < 500, (path, body[:200], response.get_data()[:500])
    if status >= 400:
        error = response.get_json(silent=True)
        assert isinstance(error, dict) and error["status"] == status and error["error"], (path, body[:200])
    response.close()
