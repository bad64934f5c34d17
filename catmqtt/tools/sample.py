"""This module writes the sample root that ``catmqtt up`` publishes as ``foo``."""

from __future__ import annotations

from pathlib import Path

import blosc2
import numpy as np

README = """\
# The catmqtt sample root

This root holds one dataset of each kind catmqtt serves:

- `ds-hello.b2frame`: a Blosc2 SChunk of `b"Hello world!" * 100`;
- `ds-1d.b2nd`, `ds-1d-b.b2nd`, `ds-1d-fields.b2nd`, `ds-2d-fields.b2nd`:
  1-D and 2-D arrays of integers, byte strings and records;
- `ds-sc-attr.b2nd`: a scalar with variable-length metadata;
- `dir1/ds-2d.b2nd`, `dir1/ds-3d.b2nd`, `dir2/ds-4d.b2nd`: arrays of 2 to 4
  dimensions in subdirectories;
- this `README.md`, a plain file, served like the rest in Blosc2 chunks.
"""


def write_sample(root: str | Path) -> Path:
    """Write the sample root into directory `root` (created, overwritten)."""
    root = Path(root)
    (root / "dir1").mkdir(parents=True, exist_ok=True)
    (root / "dir2").mkdir(exist_ok=True)
    (root / "README.md").write_text(README, encoding="utf-8")

    def save(name: str, array: np.ndarray, **kwargs) -> blosc2.NDArray:
        return blosc2.asarray(array, urlpath=str(root / name), mode="w", **kwargs)

    blosc2.SChunk(
        chunksize=100,
        data=b"Hello world!" * 100,
        urlpath=str(root / "ds-hello.b2frame"),
        cparams={"typesize": 1},
        mode="w",
    )
    save("ds-1d.b2nd", np.arange(1000, dtype=np.int64), chunks=(100,), blocks=(10,))
    save("ds-1d-b.b2nd", np.array([b"foobar"] * 1000))

    rng = np.random.default_rng(0)
    fields = np.empty(1000, dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S10"), ("d", "?")])
    fields["a"] = np.arange(1000)
    fields["b"] = np.linspace(0, 1, 1000)
    fields["c"] = [f"rec{i}".encode() for i in range(1000)]
    fields["d"] = np.arange(1000) % 3 == 0
    save("ds-1d-fields.b2nd", fields)

    fields2 = np.empty((100, 200), dtype=[("a", "<f4"), ("b", "<f8")])
    fields2["a"] = rng.random((100, 200), dtype=np.float32)
    fields2["b"] = np.arange(100 * 200, dtype=np.float64).reshape(100, 200)
    save("ds-2d-fields.b2nd", fields2)

    scalar = save("ds-sc-attr.b2nd", np.array("foobar"))
    scalar.vlmeta["a"] = 1
    scalar.vlmeta["b"] = "foo"
    scalar.vlmeta["c"] = 123.456

    save("dir1/ds-2d.b2nd", np.arange(200, dtype=np.uint16).reshape(10, 20), chunks=(5, 5), blocks=(2, 3))
    save(
        "dir1/ds-3d.b2nd",
        np.arange(60, dtype=np.float32).reshape(3, 4, 5),
        chunks=(2, 3, 4),
        blocks=(2, 2, 2),
    )
    a = np.arange(120).reshape(2, 3, 4, 5)
    save("dir2/ds-4d.b2nd", (a + a * 1j).astype(np.complex128), chunks=(1, 2, 3, 4), blocks=(1, 2, 2, 2))
    return root
