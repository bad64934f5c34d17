"""HDF5 roots, and import and export between HDF5 files and native roots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import blosc2
import h5py
import hdf5plugin
import numpy as np
import pytest

import catmqtt
from catmqtt import storage
from catmqtt.blocks import chunk_problem
from catmqtt.publisher.roots import open_root
from catmqtt.publisher.roots.hdf5chunks import BLOSC2_FILTER, ChunkPlan
from catmqtt.publisher.roots.hdf5tree import KIND_ATTR
from catmqtt.slices import forward, parse_slice, select
from catmqtt.tools.hdf5io import GROUP_ATTRS, export_h5, import_h5
from catmqtt.tools.sample import write_sample

from conftest import ChunkCounter, catmqtt_cmd, run_cli, running, wait_for

GRID = np.arange(37 * 23, dtype=np.float64).reshape(37, 23) / 3
RECORDS = np.zeros(50, dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S4"), ("d", "?"), ("e", "<f4", (2,))])
RECORDS["a"] = np.arange(50)
RECORDS["b"] = np.linspace(0, 1, 50)
RECORDS["c"] = [f"r{i}".encode() for i in range(50)]
RECORDS["d"] = np.arange(50) % 3 == 0
RECORDS["e"] = np.arange(100, dtype=np.float32).reshape(50, 2)
NUMERIC = ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16", "f16"]
# HDF5 name -> (create_dataset arguments, the root path it is served at).
DATASETS = {
    **{
        f"/numbers/{t}": ({"data": (np.arange(-30, 70) * 3).astype(t), "chunks": (16,)}, f"numbers/{t}.b2nd")
        for t in NUMERIC
    },
    "/bool": ({"data": np.arange(40) % 3 == 0, "chunks": (7,), "compression": "gzip"}, "bool.b2nd"),
    "/big-endian": ({"data": np.arange(60, dtype=">i4").reshape(6, 10), "chunks": (4, 4)}, "big-endian.b2nd"),
    "/enum": (
        {"data": np.array([0, 1, 2, 1], dtype="i1"), "dtype": h5py.enum_dtype({"A": 0, "B": 1, "C": 2})},
        "enum.b2nd",
    ),
    "/bytes": ({"data": np.array([b"a", b"bcd", b"", b"efghi"] * 5), "chunks": (6,)}, "bytes.b2nd"),
    "/records": ({"data": RECORDS, "chunks": (16,), "compression": "gzip", "shuffle": True}, "records.b2nd"),
    "/scalar": ({"data": np.float32(2.5)}, "scalar.b2nd"),
    "/scalar-string": ({"data": "h\u00e9llo", "dtype": h5py.string_dtype()}, "scalar-string.b2nd"),
    "/strings": (
        {
            "data": ["", "alpha", "\u03b2\u03ae\u03c4\u03b1", "g"] * 6,
            "dtype": h5py.string_dtype(),
            "chunks": (5,),
        },
        "strings.b2nd",
    ),
    "/ascii": ({"data": [b"x", b"yy", b"zzz"], "dtype": h5py.string_dtype("ascii")}, "ascii.b2nd"),
    "/filters/gzip": ({"data": GRID, "chunks": (10, 7), "compression": "gzip"}, "filters/gzip.b2nd"),
    "/filters/gzip-shuffle": (
        {"data": GRID, "chunks": (10, 7), "compression": "gzip", "shuffle": True},
        "filters/gzip-shuffle.b2nd",
    ),
    "/filters/fletcher32": (
        {"data": GRID, "chunks": (10, 7), "compression": "gzip", "fletcher32": True},
        "filters/fletcher32.b2nd",
    ),
    "/filters/scaleoffset": (
        {"data": np.arange(500) % 17, "chunks": (64,), "scaleoffset": 0},
        "filters/scaleoffset.b2nd",
    ),
    "/filters/blosc2": (
        {"data": GRID, "chunks": (10, 7), **hdf5plugin.Blosc2(cname="zstd")},
        "filters/blosc2.b2nd",
    ),
    "/filters/blosc2-1d": (
        {"data": np.arange(1000, dtype=np.int32), "chunks": (256,), **hdf5plugin.Blosc2(cname="lz4")},
        "filters/blosc2-1d.b2nd",
    ),
    "/filters/blosc2-records": (
        {"data": RECORDS, "chunks": (16,), **hdf5plugin.Blosc2()},
        "filters/blosc2-records.b2nd",
    ),
    "/filters/blosc": ({"data": GRID, "chunks": (10, 7), **hdf5plugin.Blosc()}, "filters/blosc.b2nd"),
    "/filters/lz4": ({"data": GRID, "chunks": (10, 7), **hdf5plugin.LZ4()}, "filters/lz4.b2nd"),
    "/filters/zstd": ({"data": GRID, "chunks": (10, 7), **hdf5plugin.Zstd()}, "filters/zstd.b2nd"),
    "/filters/lzf": ({"data": GRID, "chunks": (10, 7), "compression": "lzf"}, "filters/lzf.b2nd"),
    "/filters/bzip2": ({"data": GRID, "chunks": (10, 7), **hdf5plugin.BZip2()}, "filters/bzip2.b2nd"),
    "/filters/zfp-reversible": (
        {"data": GRID, "chunks": (10, 7), **hdf5plugin.Zfp(reversible=True)},
        "filters/zfp-reversible.b2nd",
    ),
    "/filters/bitshuffle": (
        {"data": GRID, "chunks": (10, 7), **hdf5plugin.Bitshuffle()},
        "filters/bitshuffle.b2nd",
    ),
    "/layout/contiguous": ({"data": GRID}, "layout/contiguous.b2nd"),
    "/layout/compact": ({"data": np.arange(12, dtype=np.int16)}, "layout/compact.b2nd"),
    "/layout/4d": (
        {"data": np.arange(3 * 4 * 5 * 6).reshape(3, 4, 5, 6), "chunks": (2, 3, 2, 6)},
        "layout/4d.b2nd",
    ),
    "/layout/sparse": (
        {"shape": (100,), "dtype": "i8", "chunks": (10,), "fillvalue": -1},
        "layout/sparse.b2nd",
    ),
    "/layout/zero-size": (
        {"shape": (0, 5), "dtype": "f4", "chunks": (4, 5), "maxshape": (None, 5)},
        "layout/zero-size.b2nd",
    ),
    "/grp/sub/deep": ({"data": np.arange(10), "compression": "gzip"}, "grp/sub/deep.b2nd"),
}
SKIPPED = {
    "/unsupported/empty": "null dataspace",
    "/unsupported/too-many-dims": f"{blosc2.MAX_DIM + 1} dimensions",
    "/unsupported/references": "object references",
    "/unsupported/vlen-ints": "variable-length sequences",
    "/unsupported/opaque": "opaque data",
    "/external": "an external link to other.h5:/x",
    "/dangling": "a dangling soft link to /nowhere",
    "/grp/loop": "a link to /grp, which contains it (a loop)",
    "/grp-alias/loop": "a link to /grp, which contains it (a loop)",
}
ALIASES = {"alias.b2nd": "/records", "grp-alias/sub/deep.b2nd": "/grp/sub/deep"}
ATTRS = {
    "int": 7,
    "float": 2.5,
    "text": "caf\u00e9",
    "bytes": b"raw",
    "floats": [1.0, 2.0, 3.5],
    "matrix": [[1, 2], [3, 4]],
    "words": ["a", "bc"],
    "flag": True,
    "nothing": None,
    "record": {"x": 1, "y": 2.0},
}


def write_kinds(path) -> None:
    """Write an HDF5 file with every kind of dataset, link and attribute an HDF5 root meets."""
    with h5py.File(path, "w") as f:
        for name, (kwargs, _) in DATASETS.items():
            kwargs = dict(kwargs)
            if name == "/layout/compact":
                space = h5py.h5s.create_simple((12,))
                plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                plist.set_layout(h5py.h5d.COMPACT)
                h5py.h5d.create(f.require_group("layout").id, b"compact", h5py.h5t.NATIVE_INT16, space, plist)
                f[name][...] = kwargs["data"]
                continue
            f.create_dataset(name, **kwargs)
        f["layout/sparse"][20:30] = np.arange(10)
        f.create_dataset("unsupported/empty", data=h5py.Empty("f4"))
        f.create_dataset("unsupported/too-many-dims", shape=(1,) * (blosc2.MAX_DIM + 1), dtype="i4")
        f.create_dataset("unsupported/references", data=[f["bool"].ref], dtype=h5py.ref_dtype)
        vlen = f.create_dataset("unsupported/vlen-ints", shape=(2,), dtype=h5py.vlen_dtype("i4"))
        vlen[0] = [1, 2]
        f.create_dataset("unsupported/opaque", data=np.void(b"\x01\x02\x03"))
        f["external"] = h5py.ExternalLink("other.h5", "/x")
        f["dangling"] = h5py.SoftLink("/nowhere")
        f["grp/loop"] = h5py.SoftLink("/grp")
        f["alias"] = h5py.SoftLink("/records")
        f["grp-alias"] = h5py.SoftLink("/grp")
        f.attrs["title"] = "kinds"
        f["grp"].attrs["level"] = 1
        f["grp/sub"].attrs["words"] = np.array(["x", "yz"], dtype=h5py.string_dtype())
        records = f["records"].attrs
        records["int"] = 7
        records["float"] = 2.5
        records["text"] = "caf\u00e9"
        records["bytes"] = np.bytes_(b"raw")
        records["floats"] = [1.0, 2.0, 3.5]
        records["matrix"] = np.array([[1, 2], [3, 4]])
        records["words"] = np.array(["a", "bc"], dtype=h5py.string_dtype())
        records["flag"] = True
        records["nothing"] = h5py.Empty("f8")
        records["record"] = np.array((1, 2.0), dtype=[("x", "<i8"), ("y", "<f8")])
        records["reference"] = f["bool"].ref


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    path = tmp_path_factory.mktemp("kinds") / "kinds.h5"
    write_kinds(path)
    return path


@pytest.fixture(scope="module")
def kinds_root(kinds, tmp_path_factory):
    root = open_root("kinds", kinds, tmp_path_factory.mktemp("state"))
    root.scan()
    return root


def h5py_read(dset: h5py.Dataset, key: tuple) -> np.ndarray:
    """Read `key` (integers and slices of any step) with h5py, which takes positive steps only."""
    forward = []
    flip = []
    axis = 0
    for k, n in zip(key, dset.shape, strict=False):
        if isinstance(k, int):
            forward.append(k)
            continue
        indices = range(n)[k]
        if k.step and k.step < 0:
            forward.append(slice(indices[-1], indices[0] + 1, -k.step) if indices else slice(0, 0))
            flip.append(axis)
        else:
            forward.append(k)
        axis += 1
    data = dset.asstr() if h5py.check_string_dtype(dset.dtype) and dset.dtype.kind == "O" else dset
    result = np.asarray(data[tuple(forward)] if forward else data[()])
    return np.flip(result, axis=flip) if flip else result


def random_key(shape: tuple[int, ...], rng: np.random.Generator) -> tuple:
    """A random selection: an integer or a slice with a step of either sign on each axis."""
    key = []
    for n in shape:
        if n and rng.random() < 0.2:
            key.append(int(rng.integers(-n, n)))
            continue
        start, stop = sorted(int(v) for v in rng.integers(-n - 2, n + 2, size=2))
        step = int(rng.choice([1, 2, 3, -1, -2, -5]))
        key.append(slice(stop, start, step) if step < 0 else slice(start, stop, step))
    return tuple(key)


def key_text(key: tuple) -> str:
    def part(k):
        if isinstance(k, int):
            return str(k)
        return ":".join("" if v is None else str(v) for v in (k.start, k.stop, k.step))

    return ", ".join(part(k) for k in key)


def served(root, path: str, tmp_path) -> blosc2.NDArray:
    """Rebuild a dataset from the chunks the root serves, as a subscriber's cache does."""
    meta = root.entries[path].meta
    array = storage.create_sparse(meta, tmp_path / path)
    for n in range(meta["nchunks"]):
        data, etag = root.chunk(path, n)
        assert etag == meta["etag"]
        assert chunk_problem(data, meta, n) is None, (path, n, chunk_problem(data, meta, n))
        array.schunk.update_chunk(n, data)
    return array


# The mapping


def test_root_maps_every_kind(kinds_root):
    root = kinds_root
    expected = {path for _, path in DATASETS.values()} | set(ALIASES)
    assert set(root.entries) == expected
    reasons = {item["path"]: item["reason"] for item in root.skipped}
    for name, reason in SKIPPED.items():
        assert reason in reasons.pop(name), name
    # The only other problem is the attribute that holds a reference.
    assert reasons == {"/records": "attribute 'reference' is left out: an object reference"}
    assert root.groups[""] == {"title": "kinds"}
    assert root.groups["grp"] == {"level": 1}
    assert root.groups["grp/sub"] == {"words": ["x", "yz"]}
    assert root.groups["grp-alias/sub"] == root.groups["grp/sub"]


def test_metadata(kinds_root):
    entries = kinds_root.entries
    records = entries["records.b2nd"].meta
    assert records["vlmeta"] == {k: "raw" if k == "bytes" else v for k, v in ATTRS.items()}
    assert records["chunks"] == [16]
    assert records["hdf5"]["filters"] == ["shuffle", "deflate"]
    assert entries["alias.b2nd"].meta["hdf5"]["name"] == "/alias"
    assert entries["alias.b2nd"].source is entries["records.b2nd"].source
    assert entries["strings.b2nd"].meta["dtype"] == "<U5"
    assert entries["scalar-string.b2nd"].meta["dtype"] == "<U5"
    assert entries["big-endian.b2nd"].meta["dtype"] == "int32"
    assert entries["enum.b2nd"].meta["hdf5"]["enum"] == {"A": 0, "B": 1, "C": 2}
    assert entries["scalar.b2nd"].meta["shape"] == [] and entries["scalar.b2nd"].meta["nchunks"] == 1
    assert entries["layout/zero-size.b2nd"].meta["nchunks"] == 0
    # Chunked datasets keep their chunks; contiguous ones get Blosc2's.
    assert entries["layout/4d.b2nd"].meta["chunks"] == [2, 3, 2, 6]
    assert entries["layout/contiguous.b2nd"].meta["hdf5"]["layout"] == "contiguous"
    modes = {path: e.source.mode for path, e in entries.items()}
    assert modes["filters/blosc2.b2nd"] == modes["filters/blosc2-1d.b2nd"] == "blosc2"
    assert modes["filters/blosc2-records.b2nd"] == "blosc2"
    assert modes["filters/gzip.b2nd"] == modes["records.b2nd"] == "deflate"
    assert modes["filters/fletcher32.b2nd"] == modes["filters/lz4.b2nd"] == "read"


@pytest.mark.parametrize("path", sorted({path for _, path in DATASETS.values()} | set(ALIASES)))
def test_values_equal_h5py(kinds, kinds_root, path, tmp_path):
    array = served(kinds_root, path, tmp_path)
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    with h5py.File(kinds, locking=False) as f:
        dset = f[kinds_root.entries[path].meta["hdf5"]["name"]]
        whole = h5py_read(dset, ())
        assert np.array_equal(array[()], whole.astype(array.dtype))
        for _ in range(4):
            key = random_key(dset.shape, rng)
            sel = select(parse_slice(key_text(key)), list(dset.shape))
            got = storage.read_array(array, *forward(sel))
            assert np.array_equal(got, h5py_read(dset, key).astype(array.dtype)), key


@pytest.mark.parametrize("path", ["filters/blosc2.b2nd", "filters/blosc2-1d.b2nd"])
def test_blosc2_chunks_pass_through(kinds, kinds_root, path):
    source = kinds_root.entries[path].source
    with h5py.File(kinds, locking=False) as f:
        dset = f[source.name]
        grid = [-(-s // c) for s, c in zip(dset.shape, dset.chunks, strict=True)]
        for n in range(dset.id.get_num_chunks()):
            offset = dset.id.get_chunk_info(n).chunk_offset
            inside = blosc2.schunk_from_cframe(dset.id.read_direct_chunk(offset)[1]).get_chunk(0)
            coords = [o // c for o, c in zip(offset, dset.chunks, strict=True)]
            assert kinds_root.chunk(path, int(np.ravel_multi_index(coords, grid)))[0] == inside
    # Nothing was converted.
    assert not (kinds_root.statedir / "hdf5" / source.stamp / source.key).exists()


# Changes and the publisher's state directory


def test_scan_is_cheap_and_sees_changes(tmp_path):
    path = tmp_path / "live.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("grow", data=np.arange(10), chunks=(4,), maxshape=(None,))
    root = open_root("live", path, tmp_path / "state")
    first = root.scan()
    handle = root._file
    assert root.scan() is first and root._file is handle
    old = first["grow.b2nd"].meta["etag"]
    root.chunk("grow.b2nd", 0)
    stamp_dir = tmp_path / "state/hdf5" / first["grow.b2nd"].source.stamp
    assert stamp_dir.is_dir()
    # Another process writes in place while the root has the file open.
    writer = (
        "import h5py, numpy as np, sys\n"
        "with h5py.File(sys.argv[1], 'a') as f:\n"
        "    f['grow'].resize((30,))\n"
        "    f['grow'][10:] = np.arange(10, 30)\n"
        "    f.create_dataset('new', data=[1, 2, 3])\n"
        "    f.attrs['changed'] = True\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(path)], check=True, timeout=60)
    entries = root.scan()
    assert set(entries) == {"grow.b2nd", "new.b2nd"}
    assert entries["grow.b2nd"].meta["shape"] == [30] and entries["grow.b2nd"].meta["etag"] != old
    assert root.groups[""] == {"changed": True}
    assert not stamp_dir.exists()
    assert np.array_equal(served(root, "grow.b2nd", tmp_path / "rebuilt")[:], np.arange(30))
    # A file that goes away leaves an empty root, until it is back.
    path.rename(tmp_path / "away.h5")
    assert root.scan() == {} and root.skipped == [{"path": "/", "reason": "the file is gone"}]
    (tmp_path / "away.h5").rename(path)
    assert set(root.scan()) == {"grow.b2nd", "new.b2nd"}


def test_converted_chunks_are_kept(kinds, tmp_path, monkeypatch):
    root = open_root("kinds", kinds, tmp_path / "state")
    root.scan()
    first = root.chunk("filters/lz4.b2nd", 1)
    source = root.entries["filters/lz4.b2nd"].source
    assert (tmp_path / "state/hdf5" / source.stamp / source.key / "1").read_bytes() == first[0]
    again = open_root("kinds", kinds, tmp_path / "state")
    again.scan()

    def refuse(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(ChunkPlan, "chunk", refuse)
    assert again.chunk("filters/lz4.b2nd", 1) == first


def test_publisher_download_builds_the_array(kinds, tmp_path):
    root = open_root("kinds", kinds, tmp_path / "state")
    root.scan()
    file, name = root.download("records.b2nd")
    assert name == "records.b2nd"
    array = blosc2.open(str(file))
    assert np.array_equal(array[:], RECORDS)
    assert array.schunk.vlmeta["int"] == 7


# Through a subscriber


def test_second_fetch_is_served_from_the_cache(broker, tmp_path, kinds):
    counters = []
    with running(broker, tmp_path, kinds, lambda app: counters.append(ChunkCounter(app))) as (_, sub):
        client = catmqtt.Client(sub.url)
        with h5py.File(kinds, locking=False) as f:
            expected = np.flip(f["filters/gzip"][3:25:2, :], axis=1)
        assert np.array_equal(client.fetch("foo/filters/gzip.b2nd", "3:25:2, ::-1"), expected)
        # Rows 3 to 23 touch the first 3 rows of chunks of the 4 x 4 grid.
        assert {int(n) for _, n in counters[0].requests} == set(range(12))
        assert len(counters[0].requests) == 12
        assert np.array_equal(client.fetch("foo/filters/gzip.b2nd", "3:25:2, ::-1"), expected)
        assert len(counters[0].requests) == 12
        assert client.fetch("foo/scalar-string.b2nd")[()] == "h\u00e9llo"


def test_live_changes_reach_the_subscriber(broker, tmp_path):
    path = tmp_path / "live.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("grow", data=np.arange(10), chunks=(4,), maxshape=(None,))
    with running(broker, tmp_path, path) as (_, sub):
        client = catmqtt.Client(sub.url)
        assert np.array_equal(client.fetch("foo/grow.b2nd"), np.arange(10))
        writer = (
            "import h5py, numpy as np, sys\n"
            "with h5py.File(sys.argv[1], 'a') as f:\n"
            "    f['grow'].resize((20,))\n"
            "    f['grow'][:] = np.arange(20) * 10\n"
            "    f.create_dataset('new', data=[1, 2, 3])\n"
        )
        subprocess.run([sys.executable, "-c", writer, str(path)], check=True, timeout=60)
        wait_for(lambda: client.get_info("foo/grow.b2nd")["shape"] == [20], "the resized dataset")
        wait_for(lambda: "new.b2nd" in client.get_list("foo"), "the new dataset")
        assert np.array_equal(client.fetch("foo/grow.b2nd"), np.arange(20) * 10)


def test_cli_on_an_hdf5_root(deployment, tmp_path):
    sample = tmp_path / "sample.h5"
    result = run_cli("sample", "--h5", sample)
    assert result.returncode == 0 and result.stdout == f"Sample HDF5 file written to {sample}\n"
    d = deployment
    d.start_pub("h5", sample)
    d.start_sub()
    d.wait_root("h5")
    assert d.cli("subscribe", "h5").stdout == "Ok\n"
    assert d.cli("list", "h5").stdout.splitlines() == [
        "h5/blosc2-3d.b2nd",
        "h5/contiguous-1d.b2nd",
        "h5/fixed-strings.b2nd",
        "h5/group/subgroup/lz4.b2nd",
        "h5/gzip-2d.b2nd",
        "h5/link-to-records.b2nd",
        "h5/records.b2nd",
        "h5/scalar.b2nd",
        "h5/strings.b2nd",
    ]
    info = json.loads(d.cli("info", "h5/gzip-2d.b2nd").stdout)
    assert (info["shape"], info["chunks"], info["dtype"]) == ([200, 300], [50, 100], "float64")
    assert info["vlmeta"] == {"units": "kelvin", "valid_range": [0.0, 10000.0]}
    assert info["hdf5"]["filters"] == ["shuffle", "deflate"]
    assert d.cli("show", "h5/contiguous-1d.b2nd[10:15]").stdout == "[10 11 12 13 14]\n"
    assert (
        d.cli("show", "h5/strings.b2nd[::-1]").stdout
        == "['\u03b4\u03ad\u03bb\u03c4\u03b1' 'gamma' 'beta' 'alpha']\n"
    )
    assert d.cli("show", "h5/scalar.b2nd").stdout == "3.25\n"
    assert d.cli("show", "h5/blosc2-3d.b2nd[19, 29, -3:]").stdout == "[23997 23998 23999]\n"
    # The publisher said what it skipped, and so do the root's info and the skipped dataset's 404.
    assert "skipping /references: object references" in d.procs["pub-h5"].output
    root = json.loads(d.cli("info", "h5").stdout)
    assert {"path": "/references", "reason": "object references"} in root["skipped"]
    assert root["groups"][""]["title"] == "The catmqtt sample HDF5 file"
    assert root["groups"]["group"] == {"description": "a group with a subgroup"}
    assert (root["name"], root["online"], root["subscribed"], root["datasets"]) == ("h5", True, True, 9)
    result = d.cli("info", "h5/references.b2nd")
    assert result.returncode == 1
    assert result.stderr == (
        "Error: no dataset 'references.b2nd' in root 'h5': its publisher skipped it (object references)\n"
    )
    assert d.cli("info", "nowhere").stderr.startswith("Error: no root 'nowhere' is known")
    assert catmqtt.Root("h5", d.url("sub")).info == root


# Import and export


def tree(root) -> dict[str, object]:
    """Every dataset, group attributes and link under a native root, comparable with ==."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                found[rel] = ("link", os.readlink(full))
            elif name == GROUP_ATTRS:
                frame = blosc2.open(full)
                found[rel] = ("attrs", frame.vlmeta.getall())
            elif name.endswith(".b2nd"):
                a = blosc2.open(full)
                found[rel] = (
                    str(a.dtype),
                    a.shape,
                    a.chunks,
                    a.blocks,
                    a[()].tobytes(),
                    a.schunk.vlmeta.getall(),
                    {k: a.schunk.meta[k] for k in a.schunk.meta if k != "b2nd"},
                )
            elif os.path.isfile(full):
                with open(full, "rb") as f:
                    found[rel] = ("file", f.read())
    return found


# What import keeps of what an HDF5 root skips: as an empty array, as a link.
IMPORTED = {"/unsupported/empty", "/external"}


def test_import_export_import_round_trip(kinds, tmp_path):
    count, skipped = import_h5(kinds, tmp_path / "a")
    assert count == len(DATASETS) + 1
    assert {item["path"] for item in skipped} >= set(SKIPPED) - IMPORTED
    assert not {item["path"] for item in skipped} & IMPORTED
    first = tree(tmp_path / "a")
    assert first["external"] == ("link", "other.h5:/x")
    assert first["enum.b2nd"][0] == "uint8" and first["enum.b2nd"][6] == {
        "catmqtt": {"enum": {"A": 0, "B": 1, "C": 2}}
    }
    assert first["unsupported/empty.b2nd"][:2] == ("float32", (0,))
    assert first["alias.b2nd"] == ("link", "records.b2nd")
    assert first["grp-alias"] == ("link", "grp")
    assert first[GROUP_ATTRS] == ("attrs", {"title": "kinds"})
    assert first["records.b2nd"][5] == ATTRS
    with h5py.File(kinds, locking=False) as f:
        for name, (_, path) in DATASETS.items():
            array = blosc2.open(str(tmp_path / "a" / path))
            assert np.array_equal(array[()], h5py_read(f[name], ()).astype(array.dtype)), name
    assert export_h5(tmp_path / "a", tmp_path / "b.h5") == (len(DATASETS) + 1, [])
    with h5py.File(tmp_path / "b.h5") as f, h5py.File(kinds, locking=False) as original:
        # What the original holds comes back as it was, with no attribute of ours added.
        assert h5py.check_enum_dtype(f["enum"].dtype) == {"A": 0, "B": 1, "C": 2}
        assert f["enum"].dtype.base == np.dtype("u1") and list(f["enum"][()]) == [0, 1, 2, 1]
        assert f["unsupported/empty"].shape is None and f["unsupported/empty"].dtype == np.dtype("f4")
        link = f.get("external", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and (link.filename, link.path) == ("other.h5", "/x")
        for name in DATASETS:
            assert set(f[name].attrs) <= set(original[name].attrs), name
        # Import left out the object reference, and said so.
        assert set(original["records"].attrs) - set(f["records"].attrs) == {"reference"}
        assert f["filters/gzip"].chunks == (10, 7)
        assert f["filters/gzip"].id.get_create_plist().get_filter(0)[0] == BLOSC2_FILTER
        assert f.get("alias", getlink=True).path == "/records"
    count, skipped = import_h5(tmp_path / "b.h5", tmp_path / "c")
    assert count == len(DATASETS) + 1 and skipped == []
    assert tree(tmp_path / "c") == first


def test_export_keeps_files_byte_for_byte(tmp_path):
    write_sample(tmp_path / "sample")
    count, skipped = export_h5(tmp_path / "sample", tmp_path / "sample.h5")
    assert count == 10 and skipped == []
    with h5py.File(tmp_path / "sample.h5") as f:
        assert f["README.md"].attrs[KIND_ATTR] == "file"
        assert f["ds-hello.b2frame"].attrs[KIND_ATTR] == "b2frame"
        assert f["dir2/ds-4d"].dtype == np.complex128 and f["dir2/ds-4d"].chunks == (1, 2, 3, 4)
        assert f["ds-sc-attr"].attrs["b"] == "foo"
    import_h5(tmp_path / "sample.h5", tmp_path / "back")
    original, back = tree(tmp_path / "sample"), tree(tmp_path / "back")
    # Import recorded the HDF5 type of each attribute, which export gave them.
    assert back["ds-sc-attr.b2nd"][6].pop("catmqtt") == {
        "attrs": {
            "a": {"dtype": "int64", "shape": []},
            "b": {"dtype": {"string": "utf-8", "length": None}, "shape": []},
            "c": {"dtype": "float64", "shape": []},
        }
    }
    assert back == original


# Attributes of every type, as h5py writes them (Blosc2 keeps at most 16 vlmeta
# entries a frame: they are spread over three objects).
TYPED_ATTRS = {
    "/": {
        "i1": np.int8(-5),
        "i2-matrix": np.array([[1, 2], [3, 4]], dtype="i2"),
        "i4": np.int32(7),
        "u1": np.uint8(200),
        "u8": np.uint64(2**64 - 1),
        "f2": np.float16(0.5),
        "f4": np.float32(1.5),
        "f4-list": np.array([0.25, 1e30], dtype="f4"),
        "f16": np.longdouble(2.5),
        "big-endian": np.array([1, 2], dtype=">i4"),
        "no-items": np.zeros((0,), dtype="u2"),
        "enum": np.array(1, dtype=h5py.enum_dtype({"A": 0, "B": 1}, basetype="i1")),
    },
    "/typed": {
        "c8": np.complex64(1 + 2j),
        "c16-list": np.array([1j, 2], dtype="c16"),
        "bool": np.bool_(True),
        "bools": np.array([True, False]),
        "record": np.array((1, 2.0), dtype=[("x", "<i2"), ("y", "<f4")]),
        "records": np.array([(1, 2.0), (3, 4.0)], dtype=[("x", "<i2"), ("y", "<f4")]),
        "opaque": np.void(b"ab\0"),
        "empty": h5py.Empty("i2"),
    },
    "/group": {
        "text": "h\u00e9llo",
        "texts": np.array(["a", "bc"], dtype=h5py.string_dtype()),
        "ascii-vlen": np.array(b"xy", dtype=h5py.string_dtype("ascii")),
        "fixed-bytes": np.bytes_(b"raw"),
        "fixed-utf8": np.array(b"abc", dtype=h5py.string_dtype("utf-8", 3)),
        "fixed-list": np.array([b"ab", b"c"], dtype="S2"),
    },
}


def write_typed_attrs(path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("typed", data=np.arange(4, dtype="i2"))
        f.create_group("group")
        for name, attrs in TYPED_ATTRS.items():
            for key, value in attrs.items():
                f[name].attrs[key] = value


def attr_kinds(obj: h5py.HLObject) -> dict[str, tuple]:
    """Every attribute of `obj`: its HDF5 type, shape and value, comparable with ==."""
    return {
        name: (obj.attrs.get_id(name).dtype, obj.attrs.get_id(name).shape, repr(obj.attrs[name]))
        for name in obj.attrs
    }


def test_export_gives_back_the_attribute_types_import_read(tmp_path):
    write_typed_attrs(tmp_path / "attrs.h5")
    assert run_cli("import", tmp_path / "attrs.h5", tmp_path / "aimp").returncode == 0
    assert run_cli("export", tmp_path / "aimp", tmp_path / "aexp.h5").returncode == 0
    with h5py.File(tmp_path / "attrs.h5") as original, h5py.File(tmp_path / "aexp.h5") as back:
        for name in TYPED_ATTRS:
            assert attr_kinds(back[name]) == attr_kinds(original[name]), name
    # The vlmeta holds plain values, as before: no attribute is added, none is typed.
    array = blosc2.open(str(tmp_path / "aimp/typed.b2nd"))
    vlmeta = array.schunk.vlmeta.getall()
    assert set(vlmeta) == set(TYPED_ATTRS["/typed"])
    assert (vlmeta["c8"], vlmeta["record"], vlmeta["empty"]) == (1 + 2j, {"x": 1, "y": 2.0}, None)
    frame = blosc2.open(str(tmp_path / "aimp" / GROUP_ATTRS))
    top = frame.vlmeta.getall()
    assert (top["i4"], top["i2-matrix"]) == (7, [[1, 2], [3, 4]])
    assert top["f4-list"] == [0.25, float(np.float32(1e30))]
    group = blosc2.open(str(tmp_path / "aimp/group" / GROUP_ATTRS))
    assert group.vlmeta["fixed-bytes"] == b"raw"


def test_export_of_a_changed_attribute_keeps_its_new_value(tmp_path):
    write_typed_attrs(tmp_path / "attrs.h5")
    import_h5(tmp_path / "attrs.h5", tmp_path / "aimp")
    array = blosc2.open(str(tmp_path / "aimp/typed.b2nd"), mode="a")
    array.schunk.vlmeta["bool"] = "no longer a bool"
    array.schunk.vlmeta["c8"] = 1e300
    del array
    export_h5(tmp_path / "aimp", tmp_path / "aexp.h5")
    with h5py.File(tmp_path / "aexp.h5") as f:
        assert f["typed"].attrs["bool"] == "no longer a bool" and f["typed"].attrs["c8"] == 1e300
        assert f["typed"].attrs["c16-list"].dtype == np.complex128


@pytest.mark.parametrize("kind", [{"dtype": "nonsense", "shape": []}, {"dtype": {"enum": {}}}, 5, [], None])
def test_export_of_junk_attribute_types_writes_plain_values(tmp_path, kind):
    (tmp_path / "root").mkdir()
    marks = {"catmqtt": {"attrs": {"x": kind}}}
    array = blosc2.asarray(np.arange(3), urlpath=str(tmp_path / "root/a.b2nd"), mode="w", meta=marks)
    array.schunk.vlmeta["x"] = 1
    del array
    assert export_h5(tmp_path / "root", tmp_path / "out.h5") == (1, [])
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["a"].attrs["x"] == 1 and f["a"].attrs["x"].dtype == np.int64


def test_import_of_more_attributes_than_blosc2_keeps(tmp_path):
    with h5py.File(tmp_path / "many.h5", "w") as f:
        f.create_dataset("d", data=np.arange(3))
        for obj in (f, f["d"]):
            for n in range(20):
                obj.attrs[f"a{n:02}"] = np.int16(n)
    count, skipped = import_h5(tmp_path / "many.h5", tmp_path / "many")
    reason = "attributes 'a16', 'a17', 'a18', 'a19' are left out: Blosc2 keeps no more vlmeta entries"
    reason += " (16 kept)"
    assert count == 1 and skipped == [{"path": "/", "reason": reason}, {"path": "/d", "reason": reason}]
    export_h5(tmp_path / "many", tmp_path / "back.h5")
    with h5py.File(tmp_path / "back.h5") as f:
        assert len(f.attrs) == len(f["d"].attrs) == 16 and f["d"].attrs["a15"].dtype == np.int16


def test_hdf5_root_announces_attributes_as_plain_values(tmp_path):
    write_typed_attrs(tmp_path / "attrs.h5")
    root = open_root("attrs", tmp_path / "attrs.h5", tmp_path / "state")
    root.scan()
    assert root.groups[""]["i4"] == 7 and root.groups[""]["i2-matrix"] == [[1, 2], [3, 4]]
    assert root.groups["group"]["fixed-list"] == ["ab", "c"]
    vlmeta = root.entries["typed.b2nd"].meta["vlmeta"]
    assert (vlmeta["c8"], vlmeta["bools"], vlmeta["opaque"]) == ([1.0, 2.0], [True, False], "ab\0")
    # A download of it keeps the types, as an import does.
    file, _ = root.download("typed.b2nd")
    array = blosc2.open(str(file))
    assert array.schunk.meta["catmqtt"]["attrs"]["c8"] == {"dtype": "complex64", "shape": []}


# Native roots made by import


@pytest.fixture
def native(kinds, tmp_path):
    """A native root imported from `kinds`, with links of every kind added."""
    root = tmp_path / "nat"
    import_h5(kinds, root)
    os.symlink("grp", root / "soft")
    os.symlink(tmp_path, root / "out")
    os.symlink("nowhere", root / "dangling")
    os.symlink("..", root / "grp/up")
    return root


NATIVE_SKIPPED = {
    "/dangling": "a dangling link to nowhere",
    "/external": "an external link to other.h5:/x",
    "/out": "a link to something outside the root",
    "/grp/up": "a link to /, which contains it (a loop)",
    "/grp-alias/up": "a link to /, which contains it (a loop)",
    "/soft/up": "a link to /, which contains it (a loop)",
}


def test_native_root_announces_skipped_items_and_groups(kinds_root, native, tmp_path):
    root = open_root("nat", native, tmp_path / "state")
    root.scan()
    assert {item["path"]: item["reason"] for item in root.skipped} == NATIVE_SKIPPED
    # The attributes import stored, as the HDF5 root announces them (groups without are left out).
    aliased = {"soft": root.groups["grp"], "soft/sub": root.groups["grp/sub"]}
    assert root.groups == {path: attrs for path, attrs in kinds_root.groups.items() if attrs} | aliased
    # A link to a directory inside the root is followed, as a soft link in an HDF5 root.
    assert {"soft/sub/deep.b2nd", "grp-alias/sub/deep.b2nd", "grp/sub/deep.b2nd"} <= set(root.entries)
    assert root.chunk("soft/sub/deep.b2nd", 0) == root.chunk("grp/sub/deep.b2nd", 0)
    assert not any(path.startswith(("out/", "grp/up/")) for path in root.entries)


def test_native_root_skips_links_into_its_state_directory(native):
    (native / "_state").mkdir()
    (native / "_state/secret").write_text("the publisher's own")
    os.symlink("_state/secret", native / "peek")
    root = open_root("nat", native, native / "_state")
    root.scan()
    assert {"path": "/peek", "reason": "a link into the publisher's state directory"} in root.skipped
    assert not any(path.startswith("_state") or path == "peek" for path in root.entries)


def test_native_root_through_a_subscriber(broker, native, tmp_path):
    with running(broker, tmp_path, native) as (_, sub):
        client = catmqtt.Client(sub.url)
        info = client.get_info("foo")
        assert {item["path"]: item["reason"] for item in info["skipped"]} == NATIVE_SKIPPED
        assert info["groups"][""] == {"title": "kinds"}
        with pytest.raises(catmqtt.errors.NotFound, match=r"skipped it \(an external link to other.h5:/x\)"):
            client.get_info("foo/external")
        assert np.array_equal(client.fetch("foo/soft/sub/deep.b2nd"), np.arange(10))
        # A change of a group's attributes alone is announced.
        frame = blosc2.open(str(native / GROUP_ATTRS), mode="a")
        frame.vlmeta["title"] = "changed"
        del frame
        wait_for(lambda: client.get_info("foo")["groups"][""] == {"title": "changed"}, "the new attributes")


# Bad input


@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "text.h5").write_text("not HDF5 at all\n")
    write_sample(tmp_path / "dir")
    full = tmp_path / "full.h5"
    with h5py.File(full, "w") as f:
        f.create_dataset("x", data=np.arange(10000))
    (tmp_path / "truncated.h5").write_bytes(full.read_bytes()[:5000])
    return tmp_path


@pytest.mark.parametrize(
    "command, what, message",
    [
        ("pub", "text.h5", "is not a directory or an HDF5 file"),
        ("pub", "truncated.h5", "truncated file"),
        ("pub", "missing.h5", "does not exist"),
        ("import", "text.h5", "is not an HDF5 file"),
        ("import", "truncated.h5", "truncated file"),
        ("import", "missing.h5", "does not exist"),
        ("export", "missing", "does not exist"),
        ("export", "text.h5", "is not a directory"),
        ("export", "dir", "is not a directory"),
    ],
)
def test_bad_input_is_one_line(bad_inputs, command, what, message):
    tmp = bad_inputs
    args = {
        "pub": ["pub", "foo", tmp / what, "--http", "127.0.0.1:0", "--statedir", tmp / "state"],
        "import": ["import", tmp / what, tmp / "out"],
        "export": ["export", tmp / what, tmp / ("nodir/out.h5" if what == "dir" else "out.h5")],
    }[command]
    result = subprocess.run(catmqtt_cmd(*args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_import_refuses_a_directory_in_use(kinds, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used/file").write_text("x")
    result = run_cli("import", kinds, tmp_path / "used")
    assert result.returncode == 1 and "is not an empty directory" in result.stderr


@pytest.mark.parametrize("command", ["pub", "import", "export"])
def test_missing_h5py_says_what_to_install(kinds, tmp_path, command):
    args = {
        "pub": ["pub", "foo", str(kinds), "--http", "127.0.0.1:0", "--statedir", str(tmp_path / "state")],
        "import": ["import", str(kinds), str(tmp_path / "out")],
        "export": ["export", str(tmp_path), str(tmp_path / "out.h5")],
    }[command]
    code = f"import sys; sys.modules['h5py'] = None; from catmqtt.cli import main; sys.exit(main({args!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "Error: HDF5 files need h5py and hdf5plugin"
    )
    assert "pip install 'catmqtt[hdf5]'" in result.stderr


def test_directory_roots_do_not_import_h5py(sample_root, tmp_path):
    code = (
        "import sys, catmqtt; from catmqtt.publisher.roots import open_root;"
        f" open_root('foo', {str(sample_root)!r}, {str(tmp_path)!r}).scan();"
        " assert 'h5py' not in sys.modules and 'hdf5plugin' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
