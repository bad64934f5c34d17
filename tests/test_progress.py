"""Progress bars: ``catmqtt download`` draws one on a terminal and adds nothing
when its output is not one; the library's ``download(..., progress=True)``
draws one and saves the same dataset as without, and refuses a lying
subscriber's chunks as the other reads do."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import blosc2
import numpy as np
import pytest
from test_client_cache import lying_subscriber

import catmqtt
from catmqtt.errors import Unavailable
from catmqtt.testing import catmqtt_cmd

from conftest import DEADLINE, run_cli
from test_untrusted import ONE_BLOCK, lying_meta, serving

# A Blosc2 array, an array of records, a super-chunk, a plain file.
PATHS = ["foo/dir2/ds-4d.b2nd", "foo/ds-1d-fields.b2nd", "foo/ds-hello.b2frame", "foo/README.md"]


def assert_same_dataset(path: Path, other: Path) -> None:
    """Assert that two saved datasets hold the same data, shape and metadata."""
    if path.suffix not in (".b2nd", ".b2frame"):
        assert path.read_bytes() == other.read_bytes()
        return
    a, b = blosc2.open(str(path)), blosc2.open(str(other))
    if path.suffix == ".b2nd":
        assert (a.shape, a.dtype, a.chunks, a.blocks) == (b.shape, b.dtype, b.chunks, b.blocks)
        np.testing.assert_array_equal(a[()], b[()])
        a, b = a.schunk, b.schunk
    assert a[:] == b[:]
    assert dict(a.vlmeta.getall()) == dict(b.vlmeta.getall())


@pytest.mark.parametrize("path", PATHS)
def test_a_download_with_progress_saves_the_same_dataset(foo, tmp_path, capfd, path):
    with catmqtt.Client(foo.url("sub")) as client:
        plain = client.download(path, tmp_path / "plain")
        assert capfd.readouterr().err == ""
        drawn = client.download(path, tmp_path / "drawn", progress=True)
    bar = capfd.readouterr().err
    assert path in bar and "100%" in bar
    assert drawn == tmp_path / "drawn" / path
    assert_same_dataset(plain, drawn)
    assert os.listdir(drawn.parent) == [drawn.name]


def test_the_module_helper_and_a_dataset_download_with_progress(foo, tmp_path, capfd):
    saved = catmqtt.download("foo/ds-1d.b2nd", foo.url("sub"), tmp_path / "a", progress=True)
    assert "100%" in capfd.readouterr().err
    root = catmqtt.Root("foo", urlbase=foo.url("sub"))
    again = root["ds-1d.b2nd"].download(tmp_path / "b", progress=True)
    assert "100%" in capfd.readouterr().err
    assert_same_dataset(saved, again)


def test_a_download_with_progress_refuses_a_lying_subscribers_chunk(tmp_path):
    meta = lying_meta("crash.b2nd", ONE_BLOCK)
    with (
        serving(lying_subscriber(meta, ONE_BLOCK, [])) as url,
        catmqtt.Client(url) as client,
        pytest.raises(Unavailable, match="its blocks are of 8000000 bytes, not 80"),
    ):
        client.download("evil/crash.b2nd", tmp_path, progress=True)
    assert list(tmp_path.rglob("*crash*")) == []


def on_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as its standard output and error;
    return its exit status and what it wrote there."""
    controller, terminal = pty.openpty()
    # 24 rows of 80 columns, as a terminal has (a new one has none).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with subprocess.Popen(
        catmqtt_cmd(*args), stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, cwd=cwd
    ) as proc:
        os.close(terminal)
        written = b""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
            try:
                part = os.read(controller, 1 << 16) if ready else b""
            except OSError:
                # The command closed the terminal: it ended.
                break
            if not part:
                break
            written += part
        os.close(controller)
        status = proc.wait(DEADLINE)
    return status, written.decode(errors="replace")


def test_download_draws_a_bar_on_a_terminal(foo, tmp_path):
    status, written = on_terminal("download", "foo/dir1/ds-3d.b2nd", "--sub", foo.url("sub"), cwd=tmp_path)
    assert status == 0, written
    assert "foo/dir1/ds-3d.b2nd" in written and "100%" in written and "B/s" in written
    assert written.rstrip().endswith("Dataset saved to foo/dir1/ds-3d.b2nd")
    assert (tmp_path / "foo/dir1/ds-3d.b2nd").is_file()


def test_download_adds_nothing_when_its_output_is_not_a_terminal(foo, tmp_path):
    result = run_cli("download", "foo/dir1/ds-3d.b2nd", sub=foo.url("sub"), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == "Dataset saved to foo/dir1/ds-3d.b2nd\n"
    assert result.stderr == ""


def test_bundle_draws_its_bytes_on_a_terminal(foo, tmp_path):
    status, written = on_terminal("bundle", "foo/dir1", "--sub", foo.url("sub"), cwd=tmp_path)
    assert status == 0, written
    # The bundle's size is not known before it is whole: bytes and a rate, no percentage.
    assert "bundle foo/dir1" in written and "B/s" in written, written
    assert written.rstrip().endswith("Bundle saved to foo-dir1.zip (2 datasets)")
    assert (tmp_path / "foo-dir1.zip").is_file()
