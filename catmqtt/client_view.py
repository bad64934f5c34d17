"""This module holds the object view of catmqtt's Python client, as Caterva2's:
`Root` (a root on a subscriber), `File` (a byte stream of it: a ``.b2frame``
or a plain file) and `Dataset` (an n-dimensional array), each reading through
a `client.Client`. They are importable from `catmqtt.client` and `catmqtt`.

numpy is imported when a `Dataset` first needs it. An object holds its
metadata as read when it was made; its client, shared by those of a root,
is safe to call from several threads (see `client`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client_base import credentials
from .errors import BadRequest
from .slices import as_key, parse_slice

if TYPE_CHECKING:
    import numpy as np

    from .client import Client
    from .schema import DatasetMeta


class Root:
    """A root on a subscriber; creating one subscribes to it, unless the subscriber
    follows it already (which a user who is not an admin cannot ask for).

    Parameters
    ----------
    name : str
        The root's name.
    urlbase : str, optional
        The subscriber's base URL.
    user_auth : dict, optional
        ``{"username": ..., "password": ...}`` or ``{"token": ...}`` for a
        subscriber with accounts on, as Caterva2's ``Root`` takes it.
    client : Client, optional
        A client to share; one is made from `urlbase` and `user_auth` otherwise.
    """

    def __init__(
        self,
        name: str,
        urlbase: str | None = None,
        *,
        user_auth: dict[str, str] | None = None,
        client: Client | None = None,
    ) -> None:
        # Imported here: `client` imports this module.
        from .client import Client

        self.name = name
        self.client = client or Client(urlbase, **credentials(user_auth))
        if not self.client.get_roots().get(name, {}).get("subscribed"):
            self.client.subscribe(name)

    @property
    def node_list(self) -> list[str]:
        """The paths of the root's datasets, relative to the root, sorted."""
        return self.client.get_list(self.name)

    @property
    def info(self) -> dict[str, Any]:
        """What the root's publisher announced of it (see :meth:`Client.get_info`)."""
        return self.client.get_info(self.name)

    def __repr__(self) -> str:
        return f"<Root {self.name!r} at {self.client.urlbase}>"

    def download(self, localpath: str | os.PathLike = ".", progress: bool = False) -> list[Path]:
        """Save every dataset of the root under ``<localpath>/<root>``; return the paths
        written (see :meth:`Client.download`, which also saves one directory)."""
        return self.client.download(self.name, localpath, progress)

    def __getitem__(self, path: str) -> File:
        meta = self.client.get_info(f"{self.name}/{path}")
        cls = Dataset if meta["kind"] == "ndarray" else File
        return cls(self, path, meta)


class File:
    """A byte stream of a root: a ``.b2frame`` SChunk or a plain file."""

    def __init__(self, root: Root, path: str, meta: DatasetMeta) -> None:
        self.root = root
        self.name = path
        self.path = f"{root.name}/{path}"
        self.meta = meta

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"

    @property
    def vlmeta(self) -> dict[str, Any]:
        return self.meta["vlmeta"]

    def __len__(self) -> int:
        return self.meta["shape"][0] if self.meta["shape"] else 1

    def __getitem__(self, key: Any) -> Any:
        return self.fetch(key)

    def fetch(self, key: Any = None) -> Any:
        """Return the selection `key` (an index, slice or slice string)."""
        return self.root.client.fetch(self.path, key, meta=self.meta)

    def download(self, localpath: str | os.PathLike = ".", progress: bool = False) -> Path:
        """Save the whole dataset under `localpath`; return the path written (with
        a progress bar on standard error if `progress`)."""
        return self.root.client._download_one(self.path, localpath, progress)


class Dataset(File):
    """An n-dimensional array of a root; indexing fetches data on demand.

    It behaves as a read-only numpy array would: ``np.asarray(ds)`` fetches
    it whole, ``len(ds)`` is the length of its first axis, iterating yields
    its rows (fetched a chunk's worth at a time), ``ds["field"]`` is a field
    of a record array, and an index out of range raises IndexError.
    """

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        import numpy as np

        return np.asarray(self.fetch(), dtype=dtype)

    def __len__(self) -> int:
        if not self.meta["shape"]:
            raise TypeError("len() of unsized object (a 0-d dataset)")
        return self.meta["shape"][0]

    def __iter__(self) -> Iterator[Any]:
        rows = len(self)
        step = max(self.meta["chunks"][0], 1)
        for start in range(0, rows, step):
            yield from self.fetch(slice(start, min(start + step, rows)))

    def __getitem__(self, key: Any) -> Any:
        names = self.dtype.names or ()
        if isinstance(key, str) and names:
            if key in names:
                return self.fetch()[key]
            try:
                parse_slice(key)
            except BadRequest:
                raise BadRequest(
                    f"{key[:60]!r} is neither a field of {self.path} ({', '.join(names)}) nor a slice"
                ) from None
        return self.fetch(key)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def ndim(self) -> int:
        return len(self.meta["shape"])

    @property
    def dtype(self) -> np.dtype:
        from .dtypes import dtype_from_json

        return dtype_from_json(self.meta["dtype"])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.meta["chunks"])

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(self.meta["blocks"])

    def fetch(self, key: Any = None) -> Any:
        import numpy as np

        result = super().fetch(key)
        # numpy gives a scalar, not a 0-d array, when no axis is left (and no '...').
        if isinstance(result, np.ndarray) and result.ndim == 0:
            items = () if key is None else parse_slice(key) if isinstance(key, str) else as_key(key)
            if Ellipsis not in items:
                return result[()]
        return result
