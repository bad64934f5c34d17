"""This module runs the embedded amqtt broker, and starts it as a child process.

amqtt is asyncio; it runs in a process of its own (in the same process as
busy clients it times out on acknowledgements), so nothing else in catmqtt
needs an event loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .config import LOG_FORMAT, parse_hostport, yaml_problem
from .errors import CatmqttError, ConfigError
from .fsutil import make_statedir

log = logging.getLogger(__name__)

PARENT_ENV = "CATMQTT_PARENT_PID"


def default_config(listen: str, ws: str | None) -> dict[str, Any]:
    """Return the embedded broker's amqtt configuration (as in ``brokerconf/amqtt.yaml``)."""
    listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": listen}}
    if ws is not None:
        listeners["ws"] = {"type": "ws", "bind": ws}
    return {
        "listeners": listeners,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def load_config(path: str | os.PathLike | None, listen: str | None, ws: str | None) -> dict[str, Any]:
    """Return the amqtt configuration: file `path` or the default, with the given listeners.

    `listen` and `ws` (``"off"``: no websockets) override the file's; None keeps them.
    """
    if path is None:
        conf = default_config(listen or "127.0.0.1:1883", None if ws in (None, "off") else ws)
    else:
        try:
            with open(path, encoding="utf-8") as f:
                conf = yaml.safe_load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read amqtt config {os.fspath(path)!r}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"amqtt config {os.fspath(path)!r} is not valid YAML: {yaml_problem(exc)}"
            ) from None
        if not isinstance(conf, dict) or not isinstance(conf.get("listeners"), dict):
            raise ConfigError(f"amqtt config {os.fspath(path)!r} has no 'listeners' mapping")
        if listen is not None:
            conf["listeners"].setdefault("default", {"type": "tcp"})["bind"] = listen
        if ws == "off":
            conf["listeners"] = {
                name: v
                for name, v in conf["listeners"].items()
                if not (isinstance(v, dict) and v.get("type") == "ws")
            }
        elif ws is not None:
            conf["listeners"].setdefault("ws", {"type": "ws"})["bind"] = ws
    for name, listener in conf["listeners"].items():
        if isinstance(listener, dict) and "bind" in listener:
            parse_hostport(listener["bind"], f"broker listener {name!r}")
    return conf


READY = "Broker listening on"


def _binds(conf: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (v.get("type", "tcp"), v["bind"])
        for v in conf["listeners"].values()
        if isinstance(v, dict) and "bind" in v
    ]


def run(conf: dict[str, Any], statedir: Path | None = None) -> None:
    """Run the broker until SIGINT or SIGTERM; print a READY line once it listens.

    With a `statedir`, the log and the READY line also go to its ``broker.log``.
    """
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError

    for _, bind in _binds(conf):
        _check_free(bind)
    outputs = [sys.stdout]
    if statedir is not None:
        handler = logging.FileHandler(make_statedir(statedir) / "broker.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
        outputs.append(handler.stream)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        broker = Broker(conf)
        try:
            await broker.start()
        except BrokerError as exc:
            # Lost a race for a port that _check_free found free.
            binds = ", ".join(bind for _, bind in _binds(conf))
            raise CatmqttError(f"the broker cannot listen on {binds}: {exc.__cause__ or exc}") from None
        ready = f"{READY} " + ", ".join(f"{kind}://{bind}" for kind, bind in _binds(conf))
        for out in outputs:
            print(ready, file=out, flush=True)
        parent = os.environ.get(PARENT_ENV)
        if parent:
            watcher = asyncio.create_task(_watch_parent(int(parent), stop))
        await stop.wait()
        log.info("broker stopping")
        await broker.shutdown()
        if parent:
            watcher.cancel()

    asyncio.run(main())


def set_password(path: str | os.PathLike, user: str, password: str) -> None:
    """Add `user` to the amqtt password file `path`, or change their password.

    The file holds ``user:hash`` lines with argon2 hashes (amqtt's FileAuthPlugin).
    """
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    if not user or any(c in user for c in ":#") or user != user.strip() or not user.isprintable():
        raise ConfigError(f"invalid user name {user!r}: no ':', '#' or surrounding spaces")
    if not password:
        raise ConfigError("the password is empty")
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read password file {os.fspath(path)!r}: {exc}") from None
    entry = f"{user}:{PasswordHash((Argon2Hasher(),)).hash(password)}"
    kept = [line for line in lines if line.split(":", 1)[0] != user]
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join([*kept, entry]) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write password file {os.fspath(path)!r}: {exc.strerror}") from None


def _check_free(bind: str) -> None:
    """Raise a one-line error if `bind` cannot be listened on (amqtt would log a traceback)."""
    host, port = parse_hostport(bind, "broker listen")
    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise CatmqttError(f"the broker cannot listen on {bind}: {reason}") from None


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    """Stop when the process that started us is gone, so no broker is orphaned."""
    while os.getppid() == pid:
        await asyncio.sleep(1)
    log.warning("parent process %d is gone; stopping", pid)
    stop.set()


class BrokerProcess:
    """The embedded broker as a child process (``python -m catmqtt broker``)."""

    def __init__(
        self, listen: str, ws: str | None, amqtt_conf: str | None, loglevel: str, statedir: Path
    ) -> None:
        self.listen = listen
        args = [sys.executable, "-m", "catmqtt", "broker", "--listen", listen, "--ws", ws or "off"]
        args += ["--loglevel", loglevel]
        if amqtt_conf:
            args += ["--amqtt-conf", str(amqtt_conf)]
        make_statedir(statedir)
        self.logfile = statedir / "broker.log"
        self._offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        with open(self.logfile, "ab") as logfile:
            # A session of its own: Ctrl+C reaches only us, and we stop the
            # broker after the nodes have said goodbye through it.
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _output(self) -> str:
        with open(self.logfile, "rb") as f:
            f.seek(self._offset)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Return once the broker says it listens; raise if it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY in self._output():
                return
            if self.proc.poll() is not None:
                lines = self._output().strip().splitlines()
                reason = lines[-1] if lines else f"exit status {self.proc.returncode}"
                raise CatmqttError(f"the embedded broker did not start: {reason.removeprefix('Error: ')}")
            time.sleep(0.05)
        self.stop()
        raise CatmqttError(f"the embedded broker did not start within {timeout:.0f} s (see {self.logfile})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
