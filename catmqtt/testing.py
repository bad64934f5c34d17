"""Helpers to run catmqtt nodes as processes, for tests and benchmarks.

The suite's fixtures (``tests/conftest.py``) and the scripts in
``benchmarks/`` start real brokers, publishers and subscribers on loopback,
wait for them with deadlines (never a fixed sleep), and stop them. This
module holds that machinery once:

- `free_port`, `port_open`: a free loopback port, and whether something
  listens on one;
- `wait_for`: poll a condition until it holds, fail with `WaitTimeout` after
  a deadline or as soon as a process it watches exits, showing the end of
  that process's log;
- `Proc`: one command in the background, its output going to a log file;
- `Procs`: the processes one test or benchmark starts (a broker, nodes on
  free ports), each stopped by its own handle at the end.

It imports the standard library only, and not pytest: a failed wait raises
`WaitTimeout`, an `AssertionError`, which pytest reports as a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

#: Seconds a wait lasts unless told otherwise.
DEADLINE = 30.0

#: The Mosquitto broker, or None where it is not installed.
MOSQUITTO = shutil.which("mosquitto", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin")


class WaitTimeout(AssertionError):
    """A condition did not hold in time, or a process it needed exited."""


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Return whether something accepts connections on `port` of 127.0.0.1."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(
    predicate: Callable[[], Any],
    what: str,
    timeout: float = DEADLINE,
    *,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (OSError,),
    procs: Iterable[Proc] = (),
) -> Any:
    """Poll `predicate` until it returns something true, and return that.

    Parameters
    ----------
    predicate
        Called every `interval` seconds; an exception of a type in `ignore`
        counts as false (``requests``' exceptions are ``OSError``).
    what
        What is awaited, for the message of a failure.
    timeout
        Seconds before giving up.
    procs
        Processes that must stay alive meanwhile.

    Raises
    ------
    WaitTimeout
        After `timeout` seconds, or as soon as one of `procs` has exited; the
        message ends with the end of the log of each of `procs`.
    """
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = predicate()
        except ignore:
            result = None
        if result:
            return result
        for proc in procs:
            if not proc.alive():
                raise WaitTimeout(
                    f"{proc.name} exited with status {proc.popen.returncode} while waiting for {what}"
                    + _tails(procs)
                )
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}" + _tails(procs))
        time.sleep(interval)


def _tails(procs: list[Proc]) -> str:
    return "".join(f"\n--- the end of {proc.log}:\n{proc.tail()}" for proc in procs)


def catmqtt_cmd(*args: object) -> list[str]:
    """Return the command line of ``catmqtt *args`` run by this Python."""
    return [sys.executable, "-m", "catmqtt", *map(str, args)]


def mosquitto_conf(shipped: str, port: int) -> str:
    """Return Mosquitto configuration `shipped` with one listener only, on `port` of 127.0.0.1.

    Every ``listener`` and ``protocol`` line of `shipped` is left out (so no
    websockets); the other settings are kept.
    """
    lines = [line for line in shipped.splitlines() if not line.startswith(("listener", "protocol"))]
    if len(lines) == len(shipped.splitlines()):
        raise ValueError("the Mosquitto configuration has no listener line to replace")
    return f"listener {port} 127.0.0.1\n" + "\n".join(lines) + "\n"


class Proc:
    """A command run in the background, its output (stdout and stderr) appended to `log`.

    `env` adds to this process's environment. `port` is where it serves, if
    known.
    """

    def __init__(
        self,
        args: Sequence[object],
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.args = [str(a) for a in args]
        self.log = Path(log)
        self.name = self.log.stem
        self.port = port
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **(env or {})},
            )

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid {self.pid}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def output(self) -> str:
        """The whole log so far."""
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the log."""
        return "\n".join(self.output.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_port(self, timeout: float = DEADLINE) -> Proc:
        """Return once this process listens on its `port`; raise `WaitTimeout` if it exits first."""
        port = self.port
        if port is None:
            raise ValueError(f"{self.name} was started without a port to wait for")
        # Connecting to loopback costs little: poll often, so that timed start-ups are not rounded up.
        what = f"{self.name} to listen on port {port}"
        wait_for(lambda: port_open(port), what, timeout, interval=0.01, procs=[self])
        return self

    def peak_rss_mb(self) -> float:
        """The peak resident memory of the process so far, in MiB (NaN where Linux does not say)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return float("nan")
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send `sig` (Ctrl+C by default), wait for the exit (kill after `timeout` s), return the status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class Procs:
    """The processes of one test or benchmark, each logging to ``<workdir>/<name>.log``.

    `stop_all` (or leaving a ``with`` block) stops every process started here
    and not stopped yet, the last started first, each by its own handle.
    Waits for a port last `timeout` seconds.
    """

    def __init__(self, workdir: Path, timeout: float = DEADLINE) -> None:
        self.workdir = Path(workdir)
        self.timeout = timeout
        self.procs: list[Proc] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        args: Sequence[object],
        *,
        port: int | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start `args`; with `port`, return once it listens there."""
        proc = Proc(args, self.workdir / f"{name}.log", cwd=cwd, env=env, port=port)
        self.procs.append(proc)
        if port is not None:
            proc.wait_port(self.timeout)
        return proc

    def catmqtt(self, name: str, *args: object, port: int | None = None, **kwargs: Any) -> Proc:
        """Start ``catmqtt *args``, as `start` does."""
        return self.start(name, catmqtt_cmd(*args), port=port, **kwargs)

    def broker(self, *extra: object, name: str = "broker") -> str:
        """Start the embedded broker on a free port, without websockets; return its URL once it listens."""
        port = free_port()
        self.catmqtt(name, "broker", "--listen", f"127.0.0.1:{port}", "--ws", "off", *extra, port=port)
        return f"mqtt://127.0.0.1:{port}"

    def node(
        self,
        name: str,
        command: Sequence[object],
        broker: str,
        statedir: Path,
        *extra: object,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start ``catmqtt *command`` (``pub ROOT PATH`` or ``sub``) serving HTTP on `port` (a free one
        by default) with `broker` and `statedir`; return it once it listens.

        `extra` options come last, so that they override these.
        """
        port = port or free_port()
        node = ("--http", f"127.0.0.1:{port}", "--broker", broker, "--statedir", statedir)
        return self.catmqtt(name, *command, *node, *extra, port=port, env=env)

    def stop(self, proc: Proc, sig: int = signal.SIGINT) -> int:
        """Stop `proc` (one started here) as `Proc.stop` does; return its exit status."""
        self.procs.remove(proc)
        return proc.stop(sig)

    def stop_all(self) -> None:
        while self.procs:
            self.stop(self.procs[-1])
