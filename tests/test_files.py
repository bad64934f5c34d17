"""The files shipped beside the package say what the code does."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from catmqtt import broker, config

from conftest import REPO


def test_amqtt_yaml_is_the_embedded_default():
    shipped = yaml.safe_load((REPO / "brokerconf/amqtt.yaml").read_text())
    assert shipped == broker.default_config("127.0.0.1:1883", "127.0.0.1:9001")
    assert broker.load_config(REPO / "brokerconf/amqtt.yaml", "127.0.0.1:1", None)["listeners"][
        "default"
    ] == {
        "type": "tcp",
        "bind": "127.0.0.1:1",
    }


def test_sample_config_documents_every_key():
    text = (REPO / "catmqtt.sample.yaml").read_text()
    conf = config.load(REPO / "catmqtt.sample.yaml")
    for section, keys in config.DEFAULTS.items():
        assert re.search(rf"^{section}:$", text, re.M), section
        for key, default in keys.items():
            assert re.search(rf"^\s+#? ?{key}:", text, re.M), f"{section}.{key} is not documented"
            if key in (conf.get(section) or {}):
                assert conf[section][key] == default, f"{section}.{key} differs from the default"
    # Uncommented, the per-id examples are valid sections too.
    examples = re.sub(r"^# (publisher\.\w+:|  \w+: .*)$", r"\1", text, flags=re.M)
    assert {"publisher.foo", "publisher.bar"} <= set(yaml.safe_load(examples))


def test_client_example_runs(foo):
    result = subprocess.run(
        [sys.executable, str(REPO / "samples/client_example.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CATMQTT_SUB": foo.url("sub")},
    )
    assert result.returncode == 0, result.stderr
    assert "ds[1, 2, 3] = [115.+115.j 116.+116.j 117.+117.j 118.+118.j 119.+119.j]" in result.stdout
    assert "hello: Hello world!" in result.stdout
    assert "downloaded README.md" in result.stdout


def test_broker_options_override_an_amqtt_file():
    path = REPO / "brokerconf/amqtt.yaml"
    assert set(broker.load_config(path, None, None)["listeners"]) == {"default", "ws"}
    assert set(broker.load_config(path, None, "off")["listeners"]) == {"default"}
    assert broker.load_config(path, None, "127.0.0.1:2")["listeners"]["ws"]["bind"] == "127.0.0.1:2"
    assert set(broker.load_config(None, "127.0.0.1:3", "off")["listeners"]) == {"default"}
