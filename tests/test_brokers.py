"""External brokers: Mosquitto with passwords, ACLs and TLS; amqtt with a password file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from conftest import MOSQUITTO, REPO, Deployment, Proc, catmqtt_cmd, free_port, port_open, wait_for

PASSWORDS = {"pub-foo": "pub-secret", "edge1": "edge-secret"}

pytestmark = pytest.mark.mosquitto


def make_certificates(directory) -> None:
    """A CA and a broker certificate for localhost signed by it, made with openssl."""

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=catmqtt test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
        "-subj",
        "/CN=localhost",
    )
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "broker.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )


class SecureMosquitto:
    """Mosquitto with TLS, a password file and the shipped ACL file."""

    def __init__(self, workdir) -> None:
        make_certificates(workdir)
        passwd = workdir / "passwd"
        for user, password in PASSWORDS.items():
            create = ["-c"] if not passwd.exists() else []
            subprocess.run(["mosquitto_passwd", *create, "-b", passwd, user, password], check=True)
        self.port = free_port()
        self.url = f"mqtts://localhost:{self.port}"
        conf = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"cafile {workdir / 'ca.pem'}",
            f"certfile {workdir / 'broker.pem'}",
            f"keyfile {workdir / 'broker.key'}",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {REPO / 'brokerconf/mosquitto.acl'}",
            "max_queued_messages 100000",
            "persistence false",
            "log_dest stdout",
        ]
        if os.geteuid() == 0:
            # Run as root, Mosquitto would become user "mosquitto", who cannot read tmp_path.
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = Proc([MOSQUITTO, "-c", str(conf)], workdir / "mosquitto.log")
        wait_for(lambda: port_open(self.port) or not self.proc.alive(), "secure mosquitto")
        assert self.proc.alive(), self.proc.output


@pytest.fixture
def secure(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    broker = SecureMosquitto(tmp_path)
    d = Deployment(broker, tmp_path)
    yield d
    d.stop_all()
    broker.proc.stop()


def tls_client(d, user: str, password: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}", protocol=paho.MQTTv311)
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=str(d.workdir / "ca.pem"))
    client.connect("localhost", d.broker.port)
    client.loop_start()
    return client


def test_tls_passwords_and_acl(secure, root_dir):
    d = secure
    ca = str(d.workdir / "ca.pem")
    # The publisher's password comes from the environment, the subscriber's from an option.
    d.start_pub(
        "foo",
        root_dir,
        "--cafile",
        ca,
        "--mqtt-user",
        "pub-foo",
        env={"CATMQTT_MQTT_PASSWORD": PASSWORDS["pub-foo"]},
    )
    d.start_sub(
        "sub", "--id", "edge1", "--cafile", ca, "--mqtt-user", "edge1", "--mqtt-password", PASSWORDS["edge1"]
    )
    d.wait_root("foo")
    assert d.cli("subscribe", "foo").stdout == "Ok\n"
    assert d.cli("show", "foo/ds-hello.b2frame[:12]").stdout == "Hello world!\n"

    # A subscriber's credentials cannot announce roots or datasets.
    edge = tls_client(d, "edge1", PASSWORDS["edge1"])
    try:
        evil = {
            "schema": 1,
            "name": "evil",
            "url": "http://127.0.0.1:1",
            "publisher": "x",
            "datasets": 0,
            "etag": "e",
        }
        seen = []
        edge.on_message = lambda client, userdata, message: seen.append(message.topic)
        edge.subscribe("catmqtt/v1/roots/#", qos=1)
        wait_for(lambda: "catmqtt/v1/roots/foo" in seen, "the retained snapshot")
        # A message the broker takes is sent on to this subscription before the
        # broker acknowledges it to this same client.
        edge.publish("catmqtt/v1/roots/evil", json.dumps(evil), qos=1, retain=True).wait_for_publish(10)
        edge.publish("catmqtt/v1/roots/foo/ds/evil.b2nd", b"{}", qos=1, retain=True).wait_for_publish(10)
        assert "catmqtt/v1/roots/evil" not in seen and "catmqtt/v1/roots/foo/ds/evil.b2nd" not in seen
    finally:
        edge.loop_stop()
        edge.disconnect()
    assert d.cli("roots").stdout == "foo (subscribed)\n"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--mqtt-user", "edge1", "--mqtt-password", "wrong"], "refused the connection"),
        (
            [
                "--mqtt-user",
                "edge1",
                "--mqtt-password",
                PASSWORDS["edge1"],
                "--cafile",
                "{ca}",
                "--broker",
                "mqtt://localhost:{port}",
            ],
            "closed the connection before accepting it",
        ),
    ],
    ids=["wrong-password", "no-tls"],
)
def test_refused_nodes_say_so(secure, root_dir, args, complaint):
    d = secure
    ca = str(d.workdir / "ca.pem")
    args = [a.format(ca=ca, port=d.broker.port) for a in args]
    if "--cafile" not in args:
        args += ["--cafile", ca]
    d.start_sub("sub", "--id", "edge1", *args)
    wait_for(lambda: complaint in d.procs["sub"].output, "the subscriber to complain")
    assert d.procs["sub"].alive()


def test_amqtt_with_a_password_file(tmp_path, root_dir):
    passwd = tmp_path / "catmqtt.passwd"
    result = subprocess.run(
        catmqtt_cmd("passwd", passwd, "pub-foo"), input="s3cret\n", capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert passwd.read_text().startswith("pub-foo:$argon2")
    conf = yaml.safe_load((REPO / "brokerconf/amqtt-passwd.yaml").read_text())
    conf["plugins"]["amqtt.plugins.authentication.FileAuthPlugin"]["password_file"] = str(passwd)
    (tmp_path / "amqtt.yaml").write_text(yaml.safe_dump(conf))
    port = free_port()
    broker = Proc(
        catmqtt_cmd(
            "broker", "--amqtt-conf", tmp_path / "amqtt.yaml", "--listen", f"127.0.0.1:{port}", "--ws", "off"
        ),
        tmp_path / "broker.log",
    )
    try:
        wait_for(lambda: "Broker listening on" in broker.output or not broker.alive(), "the broker")
        assert broker.alive(), broker.output

        class Address:
            url = f"mqtt://127.0.0.1:{port}"

        d = Deployment(Address, tmp_path)
        try:
            d.start_pub("foo", root_dir, "--mqtt-user", "pub-foo", env={"CATMQTT_MQTT_PASSWORD": "s3cret"})
            d.start_sub("sub", "--mqtt-user", "pub-foo", "--mqtt-password", "nope")
            wait_for(lambda: "refused the connection" in d.procs["sub"].output, "the refused subscriber")
            d.stop("sub")
            d.start_sub("sub", "--mqtt-user", "pub-foo", env={"CATMQTT_MQTT_PASSWORD": "s3cret"})
            d.wait_root("foo")
        finally:
            d.stop_all()
    finally:
        broker.stop()


def test_passwd_refuses_bad_input(tmp_path):
    for args, message in (
        (["passwd", tmp_path / "p", "bad:user"], "invalid user name"),
        (["passwd", tmp_path / "missing-dir/p", "u"], "cannot write"),
    ):
        result = subprocess.run(catmqtt_cmd(*args), input="x\n", capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and message in result.stderr, result.stderr
    assert sys.executable


def test_broker_statedir_keeps_its_log(tmp_path):
    port = free_port()
    state = tmp_path / "state"
    broker = Proc(
        catmqtt_cmd("broker", "--listen", f"127.0.0.1:{port}", "--ws", "off", "--statedir", state),
        tmp_path / "console.log",
    )
    try:
        wait_for(lambda: "Broker listening on" in broker.output or not broker.alive(), "the broker")
        assert broker.alive(), broker.output
        assert f"Broker listening on tcp://127.0.0.1:{port}" in (state / "broker.log").read_text()
    finally:
        broker.stop()
    assert "broker stopping" in (state / "broker.log").read_text()


def test_broker_statedir_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        catmqtt_cmd("broker", "--listen", f"127.0.0.1:{free_port()}", "--statedir", tmp_path / "file/state"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: ") and len(result.stderr.splitlines()) == 1, result.stderr
