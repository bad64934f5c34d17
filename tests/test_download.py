"""``catmqtt download ROOT[/DIR]`` and ``Client.download`` of a root or directory: every
dataset under it saved as ``<output>/<root>/<path>``, against real nodes; a dataset that
cannot be saved does not stop the others, and no name a subscriber sends leads out of
``<output>/<root>``."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import blosc2
import numpy as np
import pytest
from test_progress import assert_same_dataset, on_terminal

import catmqtt
from catmqtt.errors import BadRequest, Unavailable
from catmqtt.testing import catmqtt_cmd

from conftest import DEADLINE, run_cli
from test_untrusted import not_found, serving


def listed(url: str, path: str) -> list[str]:
    root = path.partition("/")[0]
    return [f"{root}/{p}" for p in catmqtt.get_list(path, urlbase=url)]


def saved_lines(out: str, paths: list[str]) -> str:
    return "".join(f"Dataset saved to {Path(out, p)}\n" for p in paths)


def files_under(directory: Path) -> list[str]:
    """The files under `directory` (hidden ones too), relative to it, sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir())


def test_download_a_root(foo, sample_root, tmp_path):
    paths = listed(foo.url("sub"), "foo")
    result = run_cli("download", "foo", "-o", "out", sub=foo.url("sub"), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == saved_lines("out", paths)
    assert files_under(tmp_path / "out") == sorted(paths)
    for path in paths:
        assert_same_dataset(tmp_path / "out" / path, sample_root / path.removeprefix("foo/"))


def test_download_a_directory(foo, sample_root, tmp_path):
    result = run_cli("download", "foo/dir1/", sub=foo.url("sub"), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == saved_lines(".", ["foo/dir1/ds-2d.b2nd", "foo/dir1/ds-3d.b2nd"])
    assert files_under(tmp_path) == ["foo/dir1/ds-2d.b2nd", "foo/dir1/ds-3d.b2nd"]
    assert_same_dataset(tmp_path / "foo/dir1/ds-3d.b2nd", sample_root / "dir1/ds-3d.b2nd")


def test_download_json_lists_the_paths(foo, tmp_path):
    result = run_cli("--json", "download", "foo/dir2", "-o", tmp_path / "o", sub=foo.url("sub"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [str(tmp_path / "o/foo/dir2/ds-4d.b2nd")]
    # One dataset, as before: an object.
    result = run_cli("--json", "download", "foo/README.md", sub=foo.url("sub"), cwd=tmp_path)
    assert json.loads(result.stdout) == {"path": "foo/README.md"}


def test_download_nested_directories(deployment, root_dir, tmp_path):
    deep = root_dir / "a/b/c"
    deep.mkdir(parents=True)
    blosc2.asarray(np.arange(100).reshape(10, 10), urlpath=str(deep / "deep.b2nd"), mode="w")
    (root_dir / "a/top.txt").write_text("top\n")
    (root_dir / "a/b/mid.bin").write_bytes(bytes(range(256)))
    deployment.serve_foo(root_dir)
    out = tmp_path / "out"
    result = deployment.cli("download", "foo/a", "-o", str(out))
    assert (result.returncode, result.stderr) == (0, "")
    wanted = ["foo/a/b/c/deep.b2nd", "foo/a/b/mid.bin", "foo/a/top.txt"]
    assert sorted(result.stdout.splitlines()) == [f"Dataset saved to {out}/{p}" for p in wanted]
    assert files_under(out) == wanted
    assert blosc2.open(str(out / wanted[0]))[3].tolist() == list(range(30, 40))
    assert (out / "foo/a/b/mid.bin").read_bytes() == bytes(range(256))
    result = deployment.cli("download", "foo/a/b", "-o", str(tmp_path / "b"))
    assert files_under(tmp_path / "b") == ["foo/a/b/c/deep.b2nd", "foo/a/b/mid.bin"]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("bar", "Error: no root 'bar' is known (see 'catmqtt roots')\n"),
        ("bar/dir1", "Error: no root 'bar' is known (see 'catmqtt roots')\n"),
        ("foo/nodir", "Error: no dataset 'nodir' in root 'foo'\n"),
        ("foo/dir1/nope", "Error: no dataset 'dir1/nope' in root 'foo'\n"),
    ],
)
def test_download_of_an_unknown_root_or_directory_is_one_line(foo, tmp_path, path, error):
    result = run_cli("download", path, sub=foo.url("sub"), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", error)
    assert list(tmp_path.iterdir()) == []


def test_download_again_overwrites_and_follows_no_link(foo, sample_root, tmp_path):
    url = foo.url("sub")
    assert run_cli("download", "foo/dir1", sub=url, cwd=tmp_path).returncode == 0
    saved = tmp_path / "foo/dir1/ds-2d.b2nd"
    saved.write_bytes(b"changed here")
    # Left by a run that was killed, and planted where a temporary file goes.
    (tmp_path / "foo/dir1/.ds-2d.b2nd.part").write_bytes(b"half")
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    (tmp_path / "foo/dir1/.ds-3d.b2nd.part").symlink_to(outside)
    result = run_cli("download", "foo/dir1", sub=url, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == saved_lines(".", ["foo/dir1/ds-2d.b2nd", "foo/dir1/ds-3d.b2nd"])
    assert_same_dataset(saved, sample_root / "dir1/ds-2d.b2nd")
    assert_same_dataset(tmp_path / "foo/dir1/ds-3d.b2nd", sample_root / "dir1/ds-3d.b2nd")
    assert outside.read_bytes() == b"keep"
    assert files_under(tmp_path / "foo") == ["dir1/ds-2d.b2nd", "dir1/ds-3d.b2nd"]


def test_a_dataset_that_cannot_be_fetched_does_not_stop_the_others(deployment, root_dir, tmp_path):
    d = deployment
    d.serve_foo(root_dir)
    url = d.url("sub")
    # dir1/ds-2d.b2nd whole in the subscriber's cache, dir1/ds-3d.b2nd not.
    catmqtt.download("foo/dir1/ds-2d.b2nd", url, tmp_path / "warm")
    d.stop("pub-foo")
    d.wait_root("foo", online=False)
    result = d.cli("download", "foo", "-o", "out", cwd=tmp_path)
    assert result.returncode == 1
    assert "Dataset saved to out/foo/dir1/ds-2d.b2nd\n" in result.stdout
    errors = result.stderr.splitlines()
    assert "Error: cannot save foo/dir1/ds-3d.b2nd: " in result.stderr
    saved = [line.removeprefix("Dataset saved to out/") for line in result.stdout.splitlines()]
    failed = [line.removeprefix("Error: cannot save ").partition(": ")[0] for line in errors]
    assert all(line.startswith("Error: cannot save foo/") for line in errors)
    assert sorted(saved + failed) == listed(url, "foo")
    # Nothing half-written.
    assert files_under(tmp_path / "out") == sorted(saved)
    with catmqtt.Client(url) as client, pytest.raises(catmqtt.DownloadFailed) as info:
        client.download("foo/dir1", tmp_path / "lib")
    assert info.value.saved == [tmp_path / "lib/foo/dir1/ds-2d.b2nd"]
    assert list(info.value.failures) == ["foo/dir1/ds-3d.b2nd"]
    assert isinstance(info.value.failures["foo/dir1/ds-3d.b2nd"], Unavailable)
    assert "1 of 2 datasets of foo/dir1 could not be saved (foo/dir1/ds-3d.b2nd: " in str(info.value)
    # Again once the publisher is back: everything, over what was saved.
    d.start_pub("foo", root_dir)
    d.wait_root("foo")
    result = d.cli("download", "foo", "-o", "out", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert files_under(tmp_path / "out") == listed(url, "foo")


def test_a_write_that_fails_does_not_stop_the_others(deployment, root_dir, tmp_path):
    # A file larger than the process may write fails as on a full disk (EFBIG; Python
    # ignores SIGXFSZ), leaving the smaller ones to be saved.
    rng = np.random.default_rng(1)
    blosc2.asarray(rng.integers(0, 1 << 62, 300_000), urlpath=str(root_dir / "dir1/big.b2nd"), mode="w")
    d = deployment
    d.serve_foo(root_dir)
    limit = 1 << 20

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        catmqtt_cmd("download", "foo/dir1", "--sub", d.url("sub")),
        capture_output=True,
        text=True,
        cwd=work,
        timeout=DEADLINE,
        stdin=subprocess.DEVNULL,
        preexec_fn=small_files,
    )
    assert result.returncode == 1
    assert result.stdout == saved_lines(".", ["foo/dir1/ds-2d.b2nd", "foo/dir1/ds-3d.b2nd"])
    assert result.stderr == "Error: cannot save foo/dir1/big.b2nd: File too large\n"
    assert files_under(work) == ["foo/dir1/ds-2d.b2nd", "foo/dir1/ds-3d.b2nd"]
    code = (
        "import catmqtt\n"
        "try:\n"
        f"    catmqtt.download('foo/dir1', {d.url('sub')!r}, 'lib')\n"
        "except catmqtt.DownloadFailed as exc:\n"
        "    print(exc.status, {k: type(v).__name__ for k, v in exc.failures.items()}, len(exc.saved))\n"
    )
    library = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=DEADLINE,
        preexec_fn=small_files,
    )
    assert library.stdout == "507 {'foo/dir1/big.b2nd': 'InsufficientStorage'} 2\n", library.stderr


def lying_list(listing: list, files: dict[str, bytes], asked: list[str]):
    """A subscriber's HTTP API listing `listing` as root evil, and serving `files` (path: bytes)."""

    def route(path: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        asked.append(path)
        if path == "/api/list/evil":
            return 200, {"Content-Type": "application/json"}, json.dumps(listing).encode()
        name = path.removeprefix("/api/download/evil/")
        if name in files:
            return 200, {"Content-Type": "application/octet-stream"}, files[name]
        return not_found(path)

    return route


UNSAFE = ["../escape.txt", "a/../../escape.txt", "/abs.txt", "a//b.txt", "a\\..\\b.txt", "./dot.txt"]


def test_unsafe_names_from_a_subscriber_are_refused(tmp_path):
    asked: list[str] = []
    files = {"ok.txt": b"fine", "sub/in.txt": b"fine too"}
    files.update({name: b"evil" for name in ("link/in.txt", "swap.txt", "loop/in.txt")})
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "evil").mkdir(parents=True)
    (out / "evil/link").symlink_to(outside)
    (out / "evil/swap.txt").symlink_to(outside / "kept.txt")
    (out / "evil/loop").symlink_to(out / "evil/loop")
    (outside / "kept.txt").write_bytes(b"keep")
    listing = [*UNSAFE, "ok.txt", "link/in.txt", "sub/in.txt", "swap.txt", "loop/in.txt"]
    with serving(lying_list(listing, files, asked)) as url:
        result = run_cli("download", "evil", "-o", str(out), sub=url)
        asked_by_cli = sorted(set(asked))
        # With a bar, metadata is read first: not for these either.
        asked.clear()
        with catmqtt.Client(url) as client, pytest.raises(catmqtt.DownloadFailed):
            client.download("evil", out, progress=True)
        assert sorted(set(asked)) == ["/api/info/evil/ok.txt", "/api/info/evil/sub/in.txt", "/api/list/evil"]
        with catmqtt.Client(url) as client, pytest.raises(catmqtt.DownloadFailed) as info:
            client.download("evil", tmp_path / "lib")
    assert result.returncode == 1
    assert result.stdout == saved_lines(str(out), ["evil/ok.txt", "evil/sub/in.txt"])
    errors = result.stderr.splitlines()
    assert [line.partition(": ")[2].partition(": ")[0] for line in errors] == [
        *(f"cannot save evil/{name}" for name in UNSAFE),
        "cannot save evil/link/in.txt",
        "cannot save evil/swap.txt",
        "cannot save evil/loop/in.txt",
    ]
    assert "invalid dataset path" in errors[0] and "leads out of" in errors[-2]
    assert errors[-1].endswith("evil/loop is a loop of symbolic links")
    assert (out / "evil/ok.txt").read_bytes() == b"fine"
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"]
    assert (outside / "kept.txt").read_bytes() == b"keep"
    assert not (tmp_path / "escape.txt").exists() and not Path("/abs.txt").exists()
    # The unsafe names were never asked for.
    assert asked_by_cli == sorted(
        ["/api/list/evil", "/api/download/evil/ok.txt", "/api/download/evil/sub/in.txt"]
    )
    # No links there: only the unsafe names fail.
    lib = ["ok.txt", "link/in.txt", "sub/in.txt", "swap.txt", "loop/in.txt"]
    assert info.value.saved == [tmp_path / "lib/evil" / name for name in lib]
    assert list(info.value.failures) == [f"evil/{name}" for name in UNSAFE]


def test_a_list_that_strays_out_of_its_directory_is_refused(tmp_path):
    asked: list[str] = []

    def route(path: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        asked.append(path)
        if path == "/api/list/evil/dir":
            return (
                200,
                {"Content-Type": "application/json"},
                json.dumps(["dir/a.txt", "other/b.txt"]).encode(),
            )
        if path == "/api/download/evil/dir/a.txt":
            return 200, {}, b"a"
        return not_found(path)

    with serving(route) as url, catmqtt.Client(url) as client, pytest.raises(catmqtt.DownloadFailed) as info:
        client.download("evil/dir", tmp_path)
    assert info.value.saved == [tmp_path / "evil/dir/a.txt"]
    assert list(info.value.failures) == ["evil/other/b.txt"]
    error = info.value.failures["evil/other/b.txt"]
    assert isinstance(error, BadRequest) and info.value.status == 400
    assert str(error) == "the subscriber listed it under evil/dir, where it is not"
    assert "/api/download/evil/other/b.txt" not in asked


def test_download_of_a_directory_draws_one_bar_on_a_terminal(foo, tmp_path):
    status, written = on_terminal("download", "foo/dir1", "--sub", foo.url("sub"), cwd=tmp_path)
    assert status == 0, written
    assert written.count("foo/dir1:") >= 1 and "100%" in written and "B/s" in written
    lines = [line.strip() for line in written.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-2:] == ["Dataset saved to foo/dir1/ds-2d.b2nd", "Dataset saved to foo/dir1/ds-3d.b2nd"]
    assert files_under(tmp_path) == ["foo/dir1/ds-2d.b2nd", "foo/dir1/ds-3d.b2nd"]


def test_the_library_downloads_a_root_or_a_directory(foo, sample_root, tmp_path, capfd):
    url = foo.url("sub")
    paths = listed(url, "foo")
    with catmqtt.Client(url) as client:
        assert client.download("foo", tmp_path / "a") == [tmp_path / "a" / p for p in paths]
        assert client.download("foo/dir2", tmp_path / "b", progress=True) == [
            tmp_path / "b/foo/dir2/ds-4d.b2nd"
        ]
    bar = capfd.readouterr().err
    assert "foo/dir2" in bar and "100%" in bar
    root = catmqtt.Root("foo", urlbase=url)
    assert root.download(tmp_path / "c") == [tmp_path / "c" / p for p in paths]
    assert catmqtt.download("foo/dir1", url, tmp_path / "d") == [
        tmp_path / "d/foo/dir1/ds-2d.b2nd",
        tmp_path / "d/foo/dir1/ds-3d.b2nd",
    ]
    for path in paths:
        assert_same_dataset(tmp_path / "c" / path, tmp_path / "a" / path)
