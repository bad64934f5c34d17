"""Use catmqtt's Python library against a running subscriber.

Start everything first with `catmqtt up` (in another shell), then run:

    python samples/client_example.py

The subscriber's URL comes from $CATMQTT_SUB, else http://127.0.0.1:8002.
"""

import os
import tempfile

import catmqtt

urlbase = os.environ.get("CATMQTT_SUB", "http://127.0.0.1:8002")

print("roots:", sorted(catmqtt.get_roots(urlbase=urlbase)))
root = catmqtt.Root("foo", urlbase=urlbase)  # subscribes to foo
print("datasets:", root.node_list)

ds = root["dir2/ds-4d.b2nd"]
print("shape, chunks, dtype:", ds.shape, ds.chunks, ds.dtype)
print("ds[1, 2, 3] =", ds[1, 2, 3])
print("ds[0, ::-1, 0, 4] =", ds[0, ::-1, 0, 4])

print("hello:", root["ds-hello.b2frame"][:12].decode())
print("vlmeta:", root["ds-sc-attr.b2nd"].vlmeta)
print("slice:", catmqtt.fetch("foo/ds-1d.b2nd", urlbase=urlbase, slice_="10:20"))

with tempfile.TemporaryDirectory() as tmp:
    path = root["README.md"].download(tmp)
    print("downloaded", path.name, path.stat().st_size, "bytes")
