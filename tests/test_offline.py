"""Offline use: bundles made by a real subscriber (``GET /api/bundle``, ``catmqtt bundle``)
from a real publisher's root, then read three ways (unzipped with Blosc2, published
again, in-process with `catmqtt.open_bundle`); and a subscriber's cache read in-process
with `catmqtt.open_cache`, the subscriber running and stopped."""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import blosc2
import numpy as np
import pytest
import requests

import catmqtt
from catmqtt.bundle import CATALOG, Bundle
from catmqtt.errors import NotFound

from conftest import wait_for

SLICES = [(), (3,), (slice(2, 9),), (slice(None, None, -3),), (slice(-5, None),), (Ellipsis, 1)]


def local(root: Path, path: str) -> np.ndarray | bytes:
    if path.endswith(".b2nd"):
        array = blosc2.open(str(root / path))
        return array[()] if array.ndim == 0 else array[...]
    if path.endswith(".b2frame"):
        return blosc2.open(str(root / path))[:]
    return (root / path).read_bytes()


def fetch_bundle(url: str, tmp_path: Path, path: str = "foo", name: str = "b.zip", **params: str) -> Path:
    response = requests.get(f"{url}/api/bundle/{path}", params=params, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/zip"
    dest = tmp_path / name
    dest.write_bytes(response.content)
    return dest


def test_a_bundle_holds_the_root_as_files_and_a_catalog(foo, sample_root, tmp_path):
    dest = fetch_bundle(foo.url("sub"), tmp_path)
    paths = catmqtt.get_list("foo", foo.url("sub"))
    with zipfile.ZipFile(dest) as z:
        assert sorted(z.namelist()) == sorted(["catalog.sqlite", *(f"data/foo/{p}" for p in paths)])
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
        z.extractall(tmp_path / "unzipped")
        catalog = z.read("catalog.sqlite")
    # Unzipped: ordinary Blosc2 files, and plain files as themselves.
    for path in paths:
        got, want = local(tmp_path / "unzipped/data/foo", path), local(sample_root, path)
        assert np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want, path
    (tmp_path / "catalog.sqlite").write_bytes(catalog)
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        rows = dict(db.execute("SELECT path, etag FROM datasets"))
        assert db.execute("SELECT count(*) FROM missing").fetchone() == (0,)
    db.close()
    for path in paths:
        assert rows[path] == catmqtt.get_info(f"foo/{path}", foo.url("sub"))["etag"]


def test_open_bundle_reads_as_the_library_does(foo, sample_root, tmp_path):
    dest = fetch_bundle(foo.url("sub"), tmp_path)
    root = catmqtt.open_bundle(dest)
    online = catmqtt.Root("foo", foo.url("sub"))
    assert root.node_list == online.node_list
    for path in root.node_list:
        ds, want = root[path], online[path]
        # The dataset's metadata as announced (the subscriber adds Caterva2's fields, and
        # writes dtype as Caterva2 does).
        assert {k: v for k, v in ds.meta.items() if k != "dtype"} == {
            k: want.meta[k] for k in ds.meta if k != "dtype"
        }
        if isinstance(ds, catmqtt.Dataset):
            assert ds.dtype == want.dtype
            for key in SLICES:
                try:
                    wanted = want[key]
                except IndexError:
                    with pytest.raises(IndexError):
                        ds[key]
                    continue
                assert np.array_equal(ds[key], wanted), (path, key)
        else:
            for key in (slice(None), slice(3, 40, 7), slice(None, None, -1), 5):
                assert ds[key] == want[key], (path, key)
    ds = root["dir1/ds-2d.b2nd"]
    assert np.array_equal(np.asarray(ds), local(sample_root, "dir1/ds-2d.b2nd"))
    saved = root["README.md"].download(tmp_path / "out")
    assert saved.read_bytes() == (sample_root / "README.md").read_bytes()
    every = root.download(tmp_path / "all")
    assert sorted(every) == sorted(tmp_path / "all/foo" / p for p in root.node_list)
    assert np.array_equal(
        blosc2.open(str(tmp_path / "all/foo/dir2/ds-4d.b2nd"))[:], local(sample_root, "dir2/ds-4d.b2nd")
    )
    with pytest.raises(NotFound, match="no dataset"):
        root["nothing.b2nd"]
    with pytest.raises(IndexError):
        ds[10**6]


def test_a_directory_and_the_datasets_left_out(foo, tmp_path):
    dest = fetch_bundle(foo.url("sub"), tmp_path, "foo/dir1")
    bundle = Bundle(dest)
    assert sorted(bundle.metas) == catmqtt.get_list("foo/dir1", foo.url("sub"))
    bundle.close()


def test_cached_takes_only_what_is_whole_in_the_cache(deployment, sample_root, tmp_path):
    d = deployment
    d.serve_foo(sample_root)
    url = d.url("sub")
    catmqtt.fetch("foo/dir1/ds-2d.b2nd", url)
    catmqtt.fetch("foo/ds-1d.b2nd", url, "0:10")
    # Chunks are written to the cache behind the reads.
    wait_for(lambda: "dir1/ds-2d.b2nd" in kept(fetch_bundle(url, tmp_path, cached="true")), "ds-2d cached")
    bundle = Bundle(tmp_path / "b.zip")
    assert sorted(bundle.metas) == ["dir1/ds-2d.b2nd"]
    missing = bundle.missing()
    assert missing["ds-1d.b2nd"] == "not whole in the cache"
    assert set(missing) | {"dir1/ds-2d.b2nd"} == set(catmqtt.get_list("foo", url))
    bundle.close()
    # The command line: the bundle, and what is missing on standard error.
    result = d.cli("bundle", "foo", "--cached", "-o", str(tmp_path / "cli.zip"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Bundle saved to {tmp_path / 'cli.zip'} (1 dataset)\n"
    assert "missing: foo/ds-1d.b2nd: not whole in the cache\n" in result.stderr
    # A publisher gone: what is not cached cannot be had, and is named with the reason.
    d.stop("pub-foo")
    wait_for(lambda: not catmqtt.get_roots(url)["foo"]["online"], "the publisher offline")
    result = d.cli("bundle", "foo", "-o", str(tmp_path / "offline.zip"))
    assert result.returncode == 1, result.stderr
    assert "missing: foo/ds-1d.b2nd: " in result.stderr and "publisher" in result.stderr
    assert sorted(Bundle(tmp_path / "offline.zip").metas) == ["dir1/ds-2d.b2nd"]


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("nothing", {}, 404, "nothing"),
        ("foo/nodir", {}, 404, "no directory"),
        ("foo", {"cached": "perhaps"}, 400, "cached must be true or false"),
        ("foo/../etc", {}, 400, ""),
    ],
)
def test_bad_bundle_requests(foo, path, params, status, message):
    response = requests.get(f"{foo.url('sub')}/api/bundle/{path}", params=params, timeout=30)
    assert response.status_code in (status, 404) and message in response.json()["error"], response.text


def test_the_command_line_saves_a_bundle(foo, tmp_path):
    result = foo.cli("bundle", "foo/dir2", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "foo-dir2.zip"
    assert result.stdout == f"Bundle saved to {dest} (1 dataset)\n" and result.stderr == ""
    assert sorted(Bundle(dest).metas) == ["dir2/ds-4d.b2nd"]
    assert not list(tmp_path.glob(".*.part"))
    result = foo.cli("bundle", "nothing")
    assert result.returncode == 1 and result.stderr.startswith("Error: ") and "nothing" in result.stderr


def kept(path: Path) -> list[str]:
    """Return the datasets the bundle at `path` holds."""
    bundle = Bundle(path)
    try:
        return sorted(bundle.metas)
    finally:
        bundle.close()


def test_a_bundle_published_is_the_root_again(deployment, sample_root, tmp_path):
    """``catmqtt pub NAME FILE.zip``: a read-only root, its data and etags as the bundle
    has them, what it left out announced as skipped."""
    d = deployment
    d.serve_foo(sample_root)
    url = d.url("sub")
    catmqtt.fetch("foo/dir1/ds-2d.b2nd", url)
    catmqtt.fetch("foo/README.md", url)
    partial = tmp_path / "partial.zip"
    wait_for(
        lambda: len(kept(fetch_bundle(url, tmp_path, name="partial.zip", cached="true"))) == 2,
        "both cached",
    )
    complete = fetch_bundle(url, tmp_path)
    d.start_pub("whole", complete)
    d.start_pub("part", partial)
    for name in ("whole", "part"):
        wait_for(lambda n=name: n in catmqtt.get_roots(url), f"root {name}")
        catmqtt.subscribe(name, url)
    assert catmqtt.get_list("whole", url) == catmqtt.get_list("foo", url)
    for path in catmqtt.get_list("foo", url):
        got, want = catmqtt.fetch(f"whole/{path}", url), catmqtt.fetch(f"foo/{path}", url)
        assert np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want, path
        infos = [catmqtt.get_info(f"{root}/{path}", url) for root in ("whole", "foo")]
        assert infos[0]["etag"] == infos[1]["etag"] and infos[0]["manifest"] == infos[1]["manifest"]
    assert catmqtt.get_list("part", url) == ["README.md", "dir1/ds-2d.b2nd"]
    skipped = catmqtt.get_info("part", url)["skipped"]
    assert {"path": "/ds-1d.b2nd", "reason": "left out of the bundle: not whole in the cache"} in skipped
    result = d.cli("download", "whole/README.md", "-o", str(tmp_path / "dl"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dl/whole/README.md").read_bytes() == (sample_root / "README.md").read_bytes()


def test_a_file_that_is_no_bundle_is_refused(tmp_path):
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as z:
        z.writestr("hello.txt", "not a bundle")
    with pytest.raises(catmqtt.errors.BadRequest, match="not a catmqtt bundle"):
        catmqtt.open_bundle(junk)
    result = subprocess.run(
        [sys.executable, "-m", "catmqtt.cli", "pub", "junk", str(junk), "--statedir", str(tmp_path / "st")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        result.returncode == 1
        and result.stderr.startswith("Error: ")
        and "not a catmqtt bundle" in result.stderr
    )
    # Catalogs that lie: metadata of another path, not metadata at all, two roots, a bad name.
    for rows in (
        {
            "root": [("foo", "{}")],
            "datasets": [("a.b2nd", '{"path": "b.b2nd"}', "e", None, "data/foo/a.b2nd")],
        },
        {"root": [("foo", "{}")], "datasets": [("a.b2nd", "[1, 2]", "e", None, "data/foo/a.b2nd")]},
        {"root": [("foo", "{}"), ("bar", "{}")], "datasets": []},
        {"root": [("../foo", "{}")], "datasets": []},
        {"root": [("foo", "7")], "datasets": []},
    ):
        catalog = tmp_path / "catalog.sqlite"
        catalog.unlink(missing_ok=True)
        with sqlite3.connect(catalog) as db:
            db.executescript(CATALOG)
            db.executemany("INSERT INTO root VALUES (?, ?)", rows["root"])
            db.executemany("INSERT INTO datasets VALUES (?, ?, ?, ?, ?)", rows["datasets"])
        db.close()
        with zipfile.ZipFile(junk, "w") as z:
            z.write(catalog, "catalog.sqlite")
        with pytest.raises(catmqtt.errors.BadRequest, match="no readable catalog"):
            catmqtt.open_bundle(junk)


def test_open_cache_reads_what_is_cached_and_only_that(deployment, sample_root, tmp_path):
    d = deployment
    d.serve_foo(sample_root)
    url = d.url("sub")
    catmqtt.fetch("foo/dir1/ds-2d.b2nd", url)
    catmqtt.fetch("foo/README.md", url)
    whole = "dir1/ds-2d.b2nd"
    # Chunks are written to the cache behind the reads.
    wait_for(lambda: whole in kept(fetch_bundle(url, tmp_path, cached="true")), "the cache")
    wait_for(lambda: "README.md" in kept(fetch_bundle(url, tmp_path, cached="true")), "the cache")
    listing = catmqtt.get_list("foo", url)
    for running in (True, False):
        roots = catmqtt.open_cache(tmp_path / "sub")
        assert list(roots) == ["foo"]
        root = roots["foo"]
        assert root.node_list == listing
        ds = root[whole]
        want = local(sample_root, whole)
        assert np.array_equal(np.asarray(ds), want)
        for key in SLICES:
            assert np.array_equal(ds[key], want[key]), key
        assert root["README.md"][:] == (sample_root / "README.md").read_bytes()
        saved = root["dir1/ds-2d.b2nd"].download(tmp_path / f"out{running}")
        assert np.array_equal(blosc2.open(str(saved))[:], want)
        # What was never fetched is not there: said, not read as zeros.
        with pytest.raises(NotFound, match="not in the cache at .* nothing is fetched"):
            root["dir2/ds-4d.b2nd"][0]
        with pytest.raises(NotFound, match="no root 'bar'"):
            roots["bar"]
        roots.close()
        if running:
            d.stop("sub")


def test_open_cache_of_what_is_no_cache(tmp_path):
    with pytest.raises(NotFound, match="holds no subscriber's cache"):
        catmqtt.open_cache(tmp_path)
    (tmp_path / "cache.sqlite").write_bytes(b"junk" * 100)
    with pytest.raises(catmqtt.errors.BadRequest, match="not a readable cache index"):
        catmqtt.open_cache(tmp_path)


def rewritten(src: Path, dest: Path, sql: str = "", damage: str | None = None) -> Path:
    """Copy the bundle `src` to `dest`, its catalog changed by `sql`, and one byte in the
    middle of member `damage` flipped."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "catalog.sqlite" and sql:
                db_path = dest.with_suffix(".sqlite")
                db_path.write_bytes(data)
                with sqlite3.connect(db_path) as db:
                    db.executescript(sql)
                db.close()
                data = db_path.read_bytes()
            out.writestr(info.filename, data)
    if damage is not None:
        # After the ZIP is written, so that its CRC is of the bytes as they were.
        with zipfile.ZipFile(dest) as z:
            info = z.getinfo(damage)
        with open(dest, "r+b") as f:
            f.seek(info.header_offset + 26)
            name, extra = struct.unpack("<HH", f.read(4))
            at = info.header_offset + 30 + name + extra + info.file_size // 2
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ 0x40]))
    return dest


def test_a_bundle_whose_files_are_not_what_its_catalog_says_is_refused(foo, tmp_path):
    genuine = fetch_bundle(foo.url("sub"), tmp_path)
    dtype = (
        """UPDATE datasets SET meta = json_set(meta, '$.dtype', 'float32') WHERE path = 'dir1/ds-2d.b2nd'"""
    )
    shape = """UPDATE datasets SET meta = json_set(meta, '$.shape', json('[10]'), '$.chunks', json('[10]'),
        '$.nbytes', 10, '$.chunksize', 10) WHERE path = 'README.md'"""
    swap = """UPDATE datasets SET member = 'x'; DELETE FROM datasets WHERE path = 'ds-1d.b2nd';
        INSERT INTO datasets SELECT 'ds-1d.b2nd', replace(meta, '"dir1/ds-2d.b2nd"', '"ds-1d.b2nd"'),
        etag, manifest, member FROM datasets WHERE path = 'dir1/ds-2d.b2nd'"""
    for name, sql, damage, path, message in [
        ("dtype", dtype, None, "dir1/ds-2d.b2nd", "not of the dtype its catalog says"),
        ("swap", swap, None, "ds-1d.b2nd", "not what its catalog says"),
        ("flip", "", "data/foo/dir1/ds-3d.b2nd", "dir1/ds-3d.b2nd", "damaged"),
        ("text", "", "data/foo/README.md", "README.md", "damaged"),
    ]:
        root = catmqtt.open_bundle(rewritten(genuine, tmp_path / f"{name}.zip", sql, damage))
        with pytest.raises(catmqtt.errors.BadRequest, match=message):
            root[path][:]
        # The others are read as they are.
        assert (
            root["dir2/ds-4d.b2nd"][0, 0, 0, 0]
            == catmqtt.fetch("foo/dir2/ds-4d.b2nd", foo.url("sub"))[0, 0, 0, 0]
        )
    with pytest.raises(catmqtt.errors.BadRequest, match="not what its catalog says"):
        catmqtt.open_bundle(rewritten(genuine, tmp_path / "shape.zip", shape))["README.md"][:]
    # A catalog that is compressed (a bomb, perhaps) is not read.
    with zipfile.ZipFile(tmp_path / "deflated.zip", "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("catalog.sqlite", zipfile.ZipFile(genuine).read("catalog.sqlite"))
    with pytest.raises(catmqtt.errors.BadRequest, match="its catalog is compressed"):
        catmqtt.open_bundle(tmp_path / "deflated.zip")
    # A file the catalog lists and the bundle lacks.
    with zipfile.ZipFile(genuine) as z, zipfile.ZipFile(tmp_path / "lacking.zip", "w") as out:
        for info in z.infolist():
            if info.filename != "data/foo/ds-1d.b2nd":
                out.writestr(info.filename, z.read(info))
    with pytest.raises(catmqtt.errors.BadRequest, match="has no file data/foo/ds-1d.b2nd"):
        catmqtt.open_bundle(tmp_path / "lacking.zip")["ds-1d.b2nd"][0]


def test_a_signed_bundle_published_under_another_name(deployment, sample_root, tmp_path):
    """The catalog keeps its publisher's signatures, made for its own topics: the bundle's
    publisher announces without them (or signs with its own key). A damaged file is
    announced as skipped, the rest served."""
    key = tmp_path / "foo.key"
    subprocess.run([sys.executable, "-m", "catmqtt", "keygen", str(key)], check=True, capture_output=True)
    d = deployment
    d.start_pub("foo", sample_root, "--sign-key", str(key))
    d.start_sub()
    url = d.url("sub")
    wait_for(lambda: "foo" in catmqtt.get_roots(url), "root foo")
    catmqtt.subscribe("foo", url)
    files = [p for p in sample_root.rglob("*") if p.is_file() and not p.name.startswith(".")]
    wait_for(lambda: len(catmqtt.get_list("foo", url)) == len(files), "foo's datasets")
    genuine = fetch_bundle(url, tmp_path)
    assert "sig" in Bundle(genuine).metas["ds-1d.b2nd"]
    rewritten(genuine, tmp_path / "copy.zip", damage="data/foo/dir1/ds-3d.b2nd")
    d.start_pub("copy", tmp_path / "copy.zip")
    wait_for(lambda: "copy" in catmqtt.get_roots(url), "root copy")
    catmqtt.subscribe("copy", url)
    want = sorted(set(catmqtt.get_list("foo", url)) - {"dir1/ds-3d.b2nd"})
    wait_for(lambda: catmqtt.get_list("copy", url) == want, "copy's datasets")
    assert catmqtt.fetch("copy/ds-1d.b2nd", url, "3:6").tolist() == [3, 4, 5]
    skipped = catmqtt.get_info("copy", url)["skipped"]
    assert any(s["path"] == "/dir1/ds-3d.b2nd" and "damaged" in s["reason"] for s in skipped), skipped


def test_bundles_share_the_threads_of_large_answers(deployment, tmp_path):
    """A bundle holds one of the HTTP threads large answers may take for as long as it is
    sent: past them, another is told at once to come back later (503), and small
    requests are still answered."""
    root = tmp_path / "root"
    root.mkdir()
    rng = np.random.default_rng(0)
    blosc2.asarray(rng.random(4_000_000), urlpath=str(root / "big.b2nd"), mode="w", chunks=(1_000_000,))
    conf = tmp_path / "catmqtt.yaml"
    # Two HTTP threads: one for large answers.
    conf.write_text("subscriber:\n  http_threads: 2\n")
    d = deployment
    d.start_pub("foo", root)
    d.start_sub("sub", "--conf", str(conf))
    url = d.url("sub")
    wait_for(lambda: "foo" in catmqtt.get_roots(url), "root foo")
    catmqtt.subscribe("foo", url)
    # Read slowly: the bundle is under way, held by a full socket.
    slow = requests.get(f"{url}/api/bundle/foo", stream=True, timeout=60)
    assert slow.status_code == 200 and slow.raw.read(1000)
    busy = requests.get(f"{url}/api/bundle/foo", timeout=60)
    assert busy.status_code == 503 and "busy" in busy.json()["error"], busy.text
    assert int(busy.headers["Retry-After"]) > 0
    assert requests.get(f"{url}/api/list/foo", timeout=10).json() == ["big.b2nd"]
    assert requests.get(f"{url}/api/stats", timeout=10).json()["large"]["threads_used"] == 1
    slow.close()
    wait_for(
        lambda: requests.get(f"{url}/api/stats", timeout=10).json()["large"]["threads_used"] == 0,
        "the bundle's thread given back",
    )
