"""Services starting, stopping and restarting as real processes."""

from __future__ import annotations

import signal
import subprocess
import textwrap

import numpy as np
import pytest
import requests

import catmqtt
from catmqtt.errors import Unavailable

from conftest import Broker, Proc, catmqtt_cmd, free_port, port_open, run_cli, up_on_free_ports, wait_for


def test_restarts_keep_subscriptions_and_cache(deployment, sample_root):
    d = deployment
    d.start_pub("foo", sample_root)
    sub_url = d.start_sub()
    d.wait_root("foo")
    client = catmqtt.Client(sub_url)
    client.subscribe("foo")
    cached = client.fetch("foo/dir2/ds-4d.b2nd", "1")
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "250:260"), np.arange(250, 260))

    assert d.stop("sub") == 0
    d.start_sub()
    assert d.cli("roots").stdout == "foo (subscribed)\n"

    assert d.stop("pub-foo") == 0
    d.wait_root("foo", online=False)
    assert d.cli("roots").stdout == "foo (subscribed) (offline)\n"
    # Cached data is still served, from the cache alone.
    assert np.array_equal(client.fetch("foo/dir2/ds-4d.b2nd", "1"), cached)
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "252:255"), np.arange(252, 255))
    # Uncached data needs the publisher: 503, naming it.
    with pytest.raises(
        Unavailable, match=f"publisher of root 'foo' at {d.url('pub-foo')} is unreachable"
    ) as exc:
        client.fetch("foo/ds-1d.b2nd", "0:10")
    assert exc.value.status == 503
    result = d.cli("show", "foo/ds-1d.b2nd[0:10]")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: publisher of root 'foo'") and result.stderr.count("\n") == 1

    d.start_pub("foo", sample_root)
    d.wait_root("foo")
    assert np.array_equal(client.fetch("foo/ds-1d.b2nd", "0:10"), np.arange(10))


def test_broker_unreachable_at_start(tmp_path, sample_root):
    broker = Broker("amqtt", tmp_path)
    from conftest import Deployment

    d = Deployment(broker, tmp_path)
    try:
        d.start_sub()
        d.start_pub("foo", sample_root)
        for key in ("sub", "pub-foo"):
            wait_for(lambda key=key: "is unreachable; retrying" in d.procs[key].output, f"{key} to complain")
        # The HTTP side works meanwhile.
        assert requests.get(f"{d.url('sub')}/api/roots", timeout=5).json() == {}
        broker.start()
        d.wait_root("foo")
        assert d.cli("subscribe", "foo").stdout == "Ok\n"
        assert d.cli("show", "foo/ds-hello.b2frame[:5]").stdout == "Hello\n"
    finally:
        d.stop_all()
        broker.stop()


@pytest.mark.parametrize("role", ["sub", "pub", "broker"])
def test_port_in_use(tmp_path, sample_root, role):
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = {
            "sub": ["sub", "--http", f"127.0.0.1:{port}"],
            "pub": ["pub", "foo", str(sample_root), "--http", f"127.0.0.1:{port}"],
            "broker": ["broker", "--listen", f"127.0.0.1:{port}", "--ws", "off"],
        }[role]
        result = subprocess.run(catmqtt_cmd(*args), capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stderr.endswith(f"127.0.0.1:{port}: address already in use\n")
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_up_reads_yaml_switches_and_wildcard_addresses(tmp_path):
    """``ws: off`` (a YAML false), and ``*:PORT`` for every interface, as Caterva2's tutorial writes it."""
    mqtt, pub, sub = free_port(), free_port(), free_port()
    (tmp_path / "catmqtt.yaml").write_text(f"broker:\n  listen: '*:{mqtt}'\n  ws: off\n")
    up = Proc(
        catmqtt_cmd(
            "--conf", "catmqtt.yaml", "up", "--pub-http", f"127.0.0.1:{pub}", "--sub-http", f"*:{sub}"
        ),
        tmp_path / "up.log",
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: "Press Ctrl+C to stop." in up.output or not up.alive(), "catmqtt up")
        assert up.alive(), up.output
        assert f"Broker      mqtt://0.0.0.0:{mqtt}\n" in up.output and "websockets" not in up.output
        result = run_cli("roots", sub=f"http://127.0.0.1:{sub}")
        wait_for(lambda: run_cli("roots", sub=f"http://127.0.0.1:{sub}").stdout == "foo\n", "root foo")
    finally:
        assert up.stop() == 0, up.output
    assert result.returncode == 0


def test_up_runs_everything_and_stops_cleanly(tmp_path):
    up, mqtt, pub, sub = up_on_free_ports(tmp_path)
    try:
        wait_for(lambda: "Press Ctrl+C to stop." in up.output or not up.alive(), "catmqtt up")
        assert f"mqtt://127.0.0.1:{mqtt}" in up.output
        assert f"http://127.0.0.1:{pub}" in up.output and f"http://127.0.0.1:{sub}" in up.output
        url = f"http://127.0.0.1:{sub}"
        wait_for(lambda: run_cli("roots", sub=url).stdout == "foo\n", "root foo")
        assert run_cli("subscribe", "foo", sub=url).stdout == "Ok\n"
        shown = run_cli("show", "foo/dir2/ds-4d.b2nd[1,2,3]", sub=url).stdout
        assert shown == "[115.+115.j 116.+116.j 117.+117.j 118.+118.j 119.+119.j]\n"
        assert (tmp_path / "_catmqtt/sample/dir2/ds-4d.b2nd").is_file()
    finally:
        status = up.stop(signal.SIGINT)
    assert status == 0, up.output
    assert "Traceback" not in up.output
    # The broker child is gone too: nothing listens on its port.
    assert not port_open(mqtt)


def test_up_reports_broker_port_in_use(tmp_path):
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            catmqtt_cmd(
                "up",
                "--listen",
                f"127.0.0.1:{port}",
                "--ws",
                "off",
                "--pub-http",
                f"127.0.0.1:{free_port()}",
                "--sub-http",
                f"127.0.0.1:{free_port()}",
            ),
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )
    assert result.returncode == 1
    assert (
        f"Error: the embedded broker did not start: the broker cannot listen on 127.0.0.1:{port}"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_config_file_two_publishers_one_subscriber(broker, tmp_path, sample_root):
    bar = tmp_path / "bar-root"
    bar.mkdir()
    (bar / "readme.txt").write_text("This is the bar root.\n")
    pub_foo, pub_bar, sub = free_port(), free_port(), free_port()
    (tmp_path / "catmqtt.yaml").write_text(
        textwrap.dedent(f"""\
        broker:
          url: {broker.url}
        publisher.foo:
          name: foo
          root: {sample_root}
          http: 127.0.0.1:{pub_foo}
        publisher.bar:
          name: bar
          root: ./bar-root
          http: 127.0.0.1:{pub_bar}
        subscriber:
          http: 127.0.0.1:{sub}
        client:
          sub: http://127.0.0.1:{sub}
        """)
    )
    procs = [
        Proc(catmqtt_cmd(*args), tmp_path / f"{name}.log", cwd=tmp_path)
        for name, args in (("foo", ["pub", "--id", "foo"]), ("bar", ["pub", "--id", "bar"]), ("sub", ["sub"]))
    ]
    try:

        def roots():
            return run_cli("roots", cwd=tmp_path).stdout

        wait_for(lambda: roots() == "bar\nfoo\n", "both roots")
        assert run_cli("subscribe", "bar", cwd=tmp_path).stdout == "Ok\n"
        assert run_cli("show", "bar/readme.txt", cwd=tmp_path).stdout == "This is the bar root.\n\n"
        assert (tmp_path / "_catmqtt/publisher.foo").is_dir() and (
            tmp_path / "_catmqtt/publisher.bar"
        ).is_dir()
        assert (tmp_path / "_catmqtt/subscriber/cache.sqlite").is_file()
    finally:
        for proc in procs:
            assert proc.stop() == 0, proc.output


@pytest.mark.parametrize(
    ("conf", "args", "message"),
    [
        ("publisher:\n  htp: x\n", ["pub", "foo", "."], "unknown key(s) htp in section 'publisher'"),
        ("pubisher: {}\n", ["sub"], "unknown section 'pubisher'"),
        ("broker: [1\n", ["sub"], "is not valid YAML"),
        ("subscriber:\n  http: nohost\n", ["sub"], "invalid http address 'nohost'"),
        ("subscriber:\n  broker: http://x\n", ["sub"], "invalid broker URL 'http://x'"),
        ("subscriber:\n  fetch_workers: 0\n", ["sub"], "fetch_workers must be an integer from 1 to 256"),
        ("", ["pub"], "give the root's NAME and ROOT directory"),
        ("", ["pub", "foo", "missing-dir"], "root 'missing-dir' does not exist"),
        ("", ["pub", "b/d", "."], "invalid root name 'b/d'"),
        ("", ["sub", "--loglevel", "LOUD"], "invalid log level 'LOUD'"),
        ("", ["sub", "--conf", "nope.yaml"], "cannot read config file 'nope.yaml'"),
        ("", ["list"], "the following arguments are required: ROOT[/DIR]"),
        ("", ["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_configuration(tmp_path, conf, args, message):
    (tmp_path / "catmqtt.yaml").write_text(conf)
    result = subprocess.run(catmqtt_cmd(*args), capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1


def test_statedir_with_foreign_database(tmp_path):
    import sqlite3

    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "cache.sqlite") as db:
        db.execute("CREATE TABLE other (x)")
    result = subprocess.run(
        catmqtt_cmd("sub", "--statedir", state, "--http", f"127.0.0.1:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "is not a catmqtt cache; move it away or use another --statedir" in result.stderr


def test_killed_publisher_is_lost_and_restart_clears_deleted_datasets(deployment, sample_root, tmp_path):
    import shutil

    root = shutil.copytree(sample_root, tmp_path / "root")
    d = deployment
    d.serve_foo(root)
    assert "foo/dir1/ds-3d.b2nd" in d.cli("list", "foo").stdout

    d.stop("pub-foo", signal.SIGKILL)
    # The broker publishes the last will: the root shows offline.
    d.wait_root("foo", online=False)
    status = requests.get(f"{d.url('sub')}/api/roots", timeout=5).json()["foo"]
    assert status["online"] is False and status["subscribed"] is True

    (root / "dir1/ds-3d.b2nd").unlink()
    d.start_pub("foo", root)
    d.wait_root("foo")
    wait_for(lambda: "foo/dir1/ds-3d.b2nd" not in d.cli("list", "foo").stdout, "the deleted dataset to go")
    result = d.cli("info", "foo/dir1/ds-3d.b2nd")
    assert result.returncode == 1 and "no dataset 'dir1/ds-3d.b2nd' in root 'foo'" in result.stderr
    assert "foo/dir1/ds-2d.b2nd" in d.cli("list", "foo").stdout


@pytest.mark.parametrize(
    "args",
    [
        ("--conf", "bad.yaml", "roots"),
        ("roots", "--conf", "bad.yaml"),
        ("--loglevel", "INFO", "--conf", "bad.yaml", "sub"),
        ("sub", "--loglevel", "INFO", "--conf", "bad.yaml"),
    ],
)
def test_common_options_before_or_after_the_command(tmp_path, args):
    (tmp_path / "bad.yaml").write_text("nonsense: 1\n")
    result = subprocess.run(catmqtt_cmd(*args), capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: config file 'bad.yaml': unknown section"), result.stderr
