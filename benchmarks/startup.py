"""How long client commands take to start, against ``python -c pass``.

Runs a broker, a publisher of a small root and a subscriber on loopback,
then times whole runs of client commands (start, one request, exit), each
the median of `--reps` runs, with ``python -c pass`` timed between them as
the floor. Goal (issue 14): a client command that reads no data within
0.15 s. ``show`` imports numpy too, to print what it reads.

Each command is also timed through requests, the baseline: a netrc file
named by ``$NETRC`` makes the command line take requests' session (its
credentials are requests' to read), as a proxy would.

    python benchmarks/startup.py [--reps 15]

The console script is timed as installed (``catmqtt`` beside this Python);
an editable install adds its import hook's own time to each run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fetch import Run

from catmqtt.tools.sample import write_sample


def timed(args: list[str], reps: int, env: dict[str, str] | None = None) -> float:
    """Return the median wall time of `reps` runs of `args` (in environment `env`),
    failing on a non-zero exit."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="runs of each command")
    args = parser.parse_args()
    script = shutil.which("catmqtt", path=str(Path(sys.executable).parent)) or "catmqtt"
    with tempfile.TemporaryDirectory(prefix="catmqtt-startup-") as tmp:
        workdir = Path(tmp)
        write_sample(workdir / "root")
        netrc = workdir / "netrc"
        netrc.touch()
        through_requests = {**os.environ, "NETRC": str(netrc)}
        with Run(workdir) as run:
            broker = run.broker()
            run.publisher(broker)
            _, client = run.subscriber("subscriber", broker, workdir / "sub")
            sub = ["--sub", client.urlbase]
            commands = {
                "--help": [script, "--help"],
                "roots": [script, "roots", *sub],
                "list": [script, "list", "bench", *sub],
                "info ROOT": [script, "info", "bench", *sub],
                "info ROOT/PATH": [script, "info", "bench/ds-1d.b2nd", *sub],
                "show ROOT/PATH[:5]": [script, "show", "bench/ds-1d.b2nd[:5]", *sub],
            }
            floor = []
            heads = f"{'median':>10}{'python -c pass':>17}{'difference':>13}{'requests':>12}{'ratio':>8}"
            print(f"{'command':<22}{heads}")
            for name, command in commands.items():
                floor.append(timed([sys.executable, "-c", "pass"], args.reps))
                took = timed(command, args.reps)
                baseline = timed(command, args.reps, through_requests)
                ms = [t * 1e3 for t in (took, floor[-1], took - floor[-1], baseline)]
                print(
                    f"{name:<22}{ms[0]:>8.0f} ms{ms[1]:>14.0f} ms{ms[2]:>10.0f} ms{ms[3]:>9.0f} ms"
                    f"{took / baseline:>8.2f}"
                )
    print(f"python -c pass, median over the run: {statistics.median(floor) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
