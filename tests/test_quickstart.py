"""The README's quick start, through the real `catmqtt` command, on both brokers."""

from __future__ import annotations

import json

import blosc2
import numpy as np
import requests

from conftest import wait_for


def test_quickstart_session(deployment, sample_root, tmp_path):
    d = deployment
    d.start_pub("foo", sample_root)
    d.start_sub()
    d.wait_root("foo")

    def out(*args: str) -> str:
        result = d.cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        return result.stdout

    assert out("roots") == "foo\n"
    assert out("subscribe", "foo") == "Ok\n"
    assert out("roots") == "foo (subscribed)\n"
    expected = sorted(
        f"foo/{p.relative_to(sample_root).as_posix()}" for p in sample_root.rglob("*") if p.is_file()
    )
    assert out("list", "foo").splitlines() == expected
    assert out("list", "foo/dir1").splitlines() == ["foo/dir1/ds-2d.b2nd", "foo/dir1/ds-3d.b2nd"]

    info = json.loads(out("info", "foo/dir2/ds-4d.b2nd"))
    assert info["shape"] == [2, 3, 4, 5]
    assert info["chunks"] == [1, 2, 3, 4]
    assert info["blocks"] == [1, 2, 2, 2]
    assert info["dtype"] == "complex128"
    assert '"shape": [2, 3, 4, 5]' in out("info", "foo/dir2/ds-4d.b2nd")

    assert out("show", "foo/ds-hello.b2frame[:12]") == "Hello world!\n"
    assert out("show", "foo/dir2/ds-4d.b2nd[1,2,3]") == (
        "[115.+115.j 116.+116.j 117.+117.j 118.+118.j 119.+119.j]\n"
    )
    assert out("show", "foo/ds-sc-attr.b2nd") == "foobar\n"

    assert out("download", "foo/dir2/ds-4d.b2nd", "-o", "out") == "Dataset saved to out/foo/dir2/ds-4d.b2nd\n"
    got = blosc2.open(str(tmp_path / "out/foo/dir2/ds-4d.b2nd"))
    src = blosc2.open(str(sample_root / "dir2/ds-4d.b2nd"))
    assert np.array_equal(got[...], src[...])
    assert (got.shape, got.chunks, got.blocks, got.dtype) == (src.shape, src.chunks, src.blocks, src.dtype)

    assert out("download", "foo/README.md") == "Dataset saved to foo/README.md\n"
    assert (tmp_path / "foo/README.md").read_bytes() == (sample_root / "README.md").read_bytes()

    assert out("download", "foo/ds-sc-attr.b2nd") == "Dataset saved to foo/ds-sc-attr.b2nd\n"
    scalar = blosc2.open(str(tmp_path / "foo/ds-sc-attr.b2nd"))
    assert scalar[()] == "foobar"
    assert scalar.vlmeta.getall() == {"a": 1, "b": "foo", "c": 123.456}

    assert out("download", "foo/ds-hello.b2frame") == "Dataset saved to foo/ds-hello.b2frame\n"
    assert blosc2.open(str(tmp_path / "foo/ds-hello.b2frame"))[:] == b"Hello world!" * 100


def test_json_output(foo):
    roots = json.loads(foo.cli("roots", "--json").stdout)
    assert roots["foo"]["subscribed"] is True and roots["foo"]["online"] is True
    assert json.loads(foo.cli("list", "foo", "--json").stdout)[0] == "foo/README.md"
    assert json.loads(foo.cli("show", "foo/ds-1d.b2nd[3:6]", "--json").stdout) == [3, 4, 5]
    # Options are accepted before the command name too.
    before = foo.cli("--json", "show", "foo/dir2/ds-4d.b2nd[0,0,0,:2]")
    assert json.loads(before.stdout) == [[0.0, 0.0], [1.0, 1.0]]


def test_unsubscribe(foo):
    assert foo.cli("unsubscribe", "foo").stdout == "Ok\n"
    try:
        assert foo.cli("roots").stdout == "foo\n"
        result = foo.cli("list", "foo")
        assert result.returncode == 1
        assert result.stderr == "Error: root 'foo' is not subscribed (run 'catmqtt subscribe foo')\n"
    finally:
        assert foo.cli("subscribe", "foo").stdout == "Ok\n"
    wait_for(lambda: requests.get(f"{foo.url('sub')}/api/list/foo", timeout=5).ok, "foo listed again")
