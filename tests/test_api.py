"""The Python library against a real deployment: every sample dataset, compared with numpy."""

from __future__ import annotations

import os
import subprocess
import sys

import blosc2
import numpy as np
import pytest
import requests

import catmqtt
from catmqtt.errors import BadRequest, NotFound, NotSubscribed, Unavailable

from conftest import free_port

NDARRAYS = [
    "ds-1d.b2nd",
    "ds-1d-b.b2nd",
    "ds-1d-fields.b2nd",
    "ds-2d-fields.b2nd",
    "ds-sc-attr.b2nd",
    "dir1/ds-2d.b2nd",
    "dir1/ds-3d.b2nd",
    "dir2/ds-4d.b2nd",
]


def random_keys(shape: tuple[int, ...], rng: np.random.Generator, count: int) -> list:
    """Basic-indexing keys of every form: ints, negative ints, steps of both signs, '...', fewer axes."""
    keys: list = [(), Ellipsis]
    for _ in range(count):
        key = []
        for size in shape[: rng.integers(0, len(shape) + 1)]:
            kind = rng.integers(0, 4)
            if kind == 0:
                key.append(int(rng.integers(-size, size)))
            else:
                start, stop = (int(v) for v in rng.integers(-size - 2, size + 3, size=2))
                step = int(rng.choice([1, 2, 3, 7, -1, -2, -5]))
                key.append(slice(start if kind != 1 else None, stop if kind != 2 else None, step))
        if len(key) < len(shape) and rng.integers(0, 3) == 0:
            key.insert(int(rng.integers(0, len(key) + 1)), Ellipsis)
        keys.append(tuple(key))
    return keys


@pytest.fixture(scope="module")
def root(foo):
    return catmqtt.Root("foo", urlbase=foo.url("sub"))


@pytest.mark.parametrize("path", NDARRAYS)
def test_dataset_slices_equal_numpy(root, sample_root, path):
    src = blosc2.open(str(sample_root / path))
    expected = src[()] if src.ndim == 0 else src[...]
    ds = root[path]
    assert isinstance(ds, catmqtt.Dataset)
    assert ds.shape == src.shape and ds.dtype == src.dtype
    assert ds.chunks == src.chunks and ds.blocks == src.blocks
    rng = np.random.default_rng(sum(map(ord, path)))
    for key in random_keys(src.shape, rng, 25):
        want = expected[key]
        got = ds[key]
        assert type(got) is type(want), key
        assert np.array_equal(got, want), key
        if isinstance(want, np.ndarray):
            assert got.shape == want.shape and got.dtype == want.dtype, key


def test_bytes_datasets(root, sample_root):
    hello = root["ds-hello.b2frame"]
    assert isinstance(hello, catmqtt.File) and not isinstance(hello, catmqtt.Dataset)
    data = b"Hello world!" * 100
    assert hello[:12] == b"Hello world!"
    for key in (slice(None), slice(5, 250, 7), slice(None, None, -3), slice(-20, None), 17, -1):
        assert hello[key] == (data[key] if isinstance(key, slice) else data[key : key + 1] or data[key:])
    readme = (sample_root / "README.md").read_bytes()
    assert root["README.md"][:] == readme
    assert root["README.md"][10:40:3] == readme[10:40:3]


def test_module_helpers(foo, sample_root, tmp_path):
    url = foo.url("sub")
    assert catmqtt.get_roots(urlbase=url)["foo"]["subscribed"] is True
    assert catmqtt.subscribe("foo", urlbase=url) == "Ok"
    assert "dir2/ds-4d.b2nd" in catmqtt.get_list("foo", urlbase=url)
    assert catmqtt.get_list("foo/dir1", urlbase=url) == ["dir1/ds-2d.b2nd", "dir1/ds-3d.b2nd"]
    assert catmqtt.get_info("foo/ds-sc-attr.b2nd", urlbase=url)["vlmeta"] == {
        "a": 1,
        "b": "foo",
        "c": 123.456,
    }
    assert np.array_equal(catmqtt.fetch("foo/ds-1d.b2nd", urlbase=url, slice_="10:20"), np.arange(10, 20))
    path = catmqtt.download("foo/dir1/ds-3d.b2nd", urlbase=url, localpath=tmp_path)
    assert path == tmp_path / "foo/dir1/ds-3d.b2nd"
    assert np.array_equal(blosc2.open(str(path))[...], blosc2.open(str(sample_root / "dir1/ds-3d.b2nd"))[...])
    local = catmqtt.Root("foo", urlbase=url)["README.md"].download(tmp_path / "out")
    assert local.read_bytes() == (sample_root / "README.md").read_bytes()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.get_info("foo/nope.b2nd"), NotFound, "no dataset 'nope.b2nd' in root 'foo'"),
        (lambda c: c.get_list("bar"), NotFound, "no root 'bar' is known"),
        (lambda c: c.subscribe("bar"), NotFound, "no root 'bar'"),
        (lambda c: c.fetch("foo/ds-1d.b2nd", "0:10:0"), BadRequest, "step cannot be zero"),
        (lambda c: c.fetch("foo/ds-1d.b2nd", "1000"), BadRequest, "index 1000 is out of range for axis 0"),
        (lambda c: c.fetch("foo/ds-1d.b2nd", "1,2"), BadRequest, "too many indices"),
        (lambda c: c.fetch("foo/ds-1d.b2nd", "a:b"), BadRequest, "malformed slice"),
        (lambda c: c.fetch("foo/ds-1d.b2nd", "...,..."), BadRequest, "more than one"),
        (lambda c: c.get_chunk("foo/ds-1d.b2nd", 10), BadRequest, "chunk 10 is out of range"),
        (lambda c: c.get_info("foo/../etc/passwd"), BadRequest, "'..'"),
        (lambda c: c.get_info("/etc/passwd"), BadRequest, "invalid root name"),
    ],
)
def test_errors(foo, call, error, match):
    with catmqtt.Client(foo.url("sub")) as client, pytest.raises(error, match=match):
        call(client)


def test_index_errors_in_getitem(root):
    ds = root["dir2/ds-4d.b2nd"]
    with pytest.raises(BadRequest, match="out of range"):
        ds[2]
    with pytest.raises(BadRequest, match="step cannot be zero"):
        ds[::0]
    with pytest.raises(BadRequest, match="basic indexing"):
        ds[[0, 1]]


def test_a_dataset_behaves_as_a_read_only_array(root, sample_root):
    ds = root["ds-1d.b2nd"]
    expected = np.arange(1000)
    assert np.array_equal(np.asarray(ds), expected) and np.asarray(ds, dtype="f4").dtype == np.float32
    assert len(ds) == 1000
    assert list(ds) == list(expected)
    assert (
        list(root["dir1/ds-2d.b2nd"])[3].tolist()
        == blosc2.open(str(sample_root / "dir1/ds-2d.b2nd"))[3].tolist()
    )
    for index in (1000, -1001):
        with pytest.raises(IndexError, match=f"index {index} is out of range for axis 0 with size 1000"):
            ds[index]
    with pytest.raises(IndexError, match="too many indices"):
        ds[1, 2]
    with pytest.raises(TypeError, match="unsized"):
        len(root["ds-sc-attr.b2nd"])
    # A mask, a list: one short line, not the whole index.
    for index, shown in (
        (np.ones(1000, dtype=bool), "an array of shape (1000,) and dtype bool"),
        (list(range(1000)), "[0, 1, 2, "),
    ):
        with pytest.raises(BadRequest) as info:
            ds[index]
        assert shown in str(info.value) and len(str(info.value)) < 200


def test_fields_of_records(root, sample_root):
    ds = root["ds-1d-fields.b2nd"]
    src = blosc2.open(str(sample_root / "ds-1d-fields.b2nd"))[:]
    for name in ("a", "b", "c", "d"):
        assert np.array_equal(ds[name], src[name])
    assert np.array_equal(ds["10:20"], src[10:20])
    with pytest.raises(BadRequest, match=r"'e' is neither a field of foo/ds-1d-fields.b2nd \(a, b, c, d\)"):
        ds["e"]
    assert np.array_equal(root["ds-2d-fields.b2nd"]["b"][5], np.arange(1000, 1200))


@pytest.mark.parametrize("how", ["environment", "client.sub", "subscriber.urlbase", "subscriber.http"])
def test_the_library_finds_the_subscriber_as_the_command_line_does(foo, tmp_path, how):
    url = foo.url("sub")
    env = {k: v for k, v in os.environ.items() if k != "CATMQTT_SUB"}
    if how == "environment":
        env["CATMQTT_SUB"] = url
    else:
        section, key = how.split(".")
        value = url.removeprefix("http://") if key == "http" else url
        (tmp_path / "catmqtt.yaml").write_text(f"{section}:\n  {key}: {value}\n")
    code = "import catmqtt; print(catmqtt.Client().urlbase, sorted(catmqtt.get_roots()))"
    library = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert library.stdout == f"{url} ['foo']\n", library.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "catmqtt", "roots"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.stdout == "foo (subscribed)\n", cli.stderr


def test_not_subscribed_is_409(foo):
    client = catmqtt.Client(foo.url("sub"))
    client.unsubscribe("foo")
    try:
        with pytest.raises(NotSubscribed, match="not subscribed"):
            client.fetch("foo/ds-1d.b2nd", "0:1")
    finally:
        client.subscribe("foo")


def test_import_stays_light():
    # The library's own needs, requests and numpy, are imported when first used.
    code = (
        "import sys, catmqtt;"
        "heavy = ('flask', 'amqtt', 'h5py', 'paho', 'blosc2', 'numpy', 'requests');"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_broker_stays_light():
    # `catmqtt broker` runs on hosts that serve no data.
    code = (
        "import sys, catmqtt.broker, catmqtt.cli;"
        "print([m for m in ('numpy', 'blosc2', 'requests', 'flask', 'xxhash') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("command", "imported"),
    [
        (["roots"], []),
        (["list", "foo"], []),
        (["info", "foo"], []),
        (["info", "foo/ds-1d.b2nd"], []),
        (["subscribe", "foo"], []),
        # Printing arrays takes numpy; small selections are read as .npy, without Blosc2.
        (["show", "foo/ds-1d.b2nd[3:5]"], ["numpy"]),
        (["show", "foo/dir1/ds-2d.b2nd"], ["numpy"]),
        (["show", "foo/README.md"], []),
    ],
)
def test_client_commands_import_only_what_they_need(foo, command, imported):
    # What they would cost to import is most of a command's start-up time; requests
    # is not needed on http:// with no proxy and no netrc file.
    assert command_imports(command, foo.url("sub"), {})[0] == f"0 {imported}"


def command_imports(command: list[str], sub: str, env: dict[str, str]) -> tuple[str, str]:
    """Return the status of catmqtt `command` run in a new process with `env` added to its
    environment, and which of the modules that cost most to import it imported; and
    what it wrote on standard error."""
    code = (
        "import sys; from catmqtt.cli import main;"
        f"status = main({[*command, '--sub', sub]!r});"
        "print(status, [m for m in ('numpy', 'blosc2', 'flask', 'paho', 'requests') if m in sys.modules])"
    )
    environ = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")} | env
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=environ
    )
    return result.stdout.splitlines()[-1], result.stderr


@pytest.mark.parametrize(
    ("env", "reached"),
    [
        # requests sends them, through the proxy or not as it says.
        ({"http_proxy": "PROXY", "no_proxy": ""}, False),
        ({"http_proxy": "PROXY", "no_proxy": "127.0.0.1"}, True),
        ({"NETRC": "NETRC"}, True),
    ],
)
def test_client_commands_take_proxies_and_netrc_from_the_environment(foo, tmp_path, env, reached):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine elsewhere.invalid login someone password secret\n")
    proxy = f"http://127.0.0.1:{free_port()}"
    env = {k: v.replace("PROXY", proxy).replace("NETRC", str(netrc)) for k, v in env.items()}
    out, err = command_imports(["roots"], foo.url("sub"), env)
    assert out == f"{0 if reached else 1} ['requests']", err
    if not reached:
        assert "cannot reach the subscriber" in err


@pytest.mark.parametrize(("no_proxy", "reached"), [("", False), ("127.0.0.1", True)])
def test_the_client_takes_proxies_from_the_environment(foo, monkeypatch, no_proxy, reached):
    # A proxy that nobody listens on: a request sent through it fails.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, no_proxy)
    client = catmqtt.Client(foo.url("sub"))
    if reached:
        assert "foo" in client.get_roots()
    else:
        with pytest.raises(Unavailable, match="cannot reach the subscriber"):
            client.get_roots()


def test_large_output_is_refused_before_it_is_fetched(deployment, root_dir):
    """JSON of a large selection, and a large selection of bytes (printed as their repr)."""
    blosc2.asarray(np.arange(2_000_000), urlpath=str(root_dir / "big.b2nd"), mode="w")
    (root_dir / "big.bin").write_bytes(bytes(range(256)) * 8000)
    d = deployment
    d.serve_foo(root_dir)
    result = d.cli("--json", "show", "foo/big.b2nd")
    assert result.returncode == 1
    assert result.stderr == (
        "Error: the selection has 2000000 items, over the 1000000 that --json prints:"
        " select less (foo/big.b2nd[:1000000]), or save it with 'catmqtt download'\n"
    )
    result = d.cli("show", "foo/big.bin")
    assert result.returncode == 1
    assert result.stderr == (
        "Error: the selection has 2048000 bytes, over the 1000000 that show prints:"
        " select less (foo/big.bin[:1000000]), or save it with 'catmqtt download'\n"
    )
    stats = requests.get(f"{d.url('sub')}/api/stats", timeout=5).json()
    assert stats["total"]["fetched_chunks"] == 0
    assert d.cli("--json", "show", "foo/big.b2nd[1999997:]").stdout == "[1999997, 1999998, 1999999]\n"
    result = d.cli("show", "foo/big.bin[0:2000000]")
    assert result.returncode == 1 and "the selection has 2000000 bytes, over the 1000000" in result.stderr
    assert d.cli("show", "foo/big.bin[510:512]").stdout == repr(bytes([254, 255])) + "\n"
    assert d.cli("show", "foo/big.bin[-2:]").stdout == repr(bytes([254, 255])) + "\n"
