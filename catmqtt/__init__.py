"""catmqtt: share Blosc2 datasets between sites and edge nodes over MQTT.

Importing catmqtt gives the client library only (requests and numpy); the
services (broker, publisher, subscriber) live in their own modules.
"""

__version__ = "0.1.0.dev0"

from . import errors  # noqa: E402
from .client import (  # noqa: E402
    Client,
    Dataset,
    File,
    Root,
    download,
    fetch,
    get_info,
    get_list,
    get_roots,
    subscribe,
)

__all__ = [
    "Client",
    "Dataset",
    "File",
    "Root",
    "__version__",
    "download",
    "errors",
    "fetch",
    "get_info",
    "get_list",
    "get_roots",
    "subscribe",
]
