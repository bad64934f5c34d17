"""catmqtt: share Blosc2 datasets between sites and edge nodes over MQTT.

Importing catmqtt gives the client library (requests, and numpy once data
is read), itself loaded on first use, so that ``catmqtt`` commands start
quickly; the services (broker, publisher, subscriber) live in their own
modules.
"""

from typing import TYPE_CHECKING, Any

from . import errors

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:
    from .client import (
        Client,
        Dataset,
        DownloadFailed,
        File,
        Root,
        download,
        fetch,
        get_info,
        get_list,
        get_roots,
        subscribe,
    )
    from .offline import open_bundle, open_cache

__all__ = [
    "Client",
    "Dataset",
    "DownloadFailed",
    "File",
    "Root",
    "__version__",
    "download",
    "errors",
    "fetch",
    "get_info",
    "get_list",
    "get_roots",
    "open_bundle",
    "open_cache",
    "subscribe",
]


def __getattr__(name: str) -> Any:
    if name in ("open_bundle", "open_cache"):
        from . import offline

        return getattr(offline, name)
    if name in __all__ and name not in ("__version__", "errors"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'catmqtt' has no attribute {name!r}")
