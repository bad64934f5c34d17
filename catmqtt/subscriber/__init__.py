"""This package holds the subscriber: it follows roots announced on MQTT,
fetches their chunks on demand into its cache and serves them over HTTP.

Its parts (``docs/architecture.rst`` has the whole picture):

- `follower`: what MQTT says of roots, datasets and nodes, kept in the cache;
- `reader`: the reads behind the endpoints; `answers`: the large ones;
- `flights`: each missing chunk fetched once, `transport`: publishers over HTTP;
- `cache`: the chunk cache (`index`, its SQLite file; `catalogue`, the roots;
  `chunks`, the containers);
- `app`: the Flask views; `guard`: hosts, origins and accounts (`accounts`,
  `tokens`) before them; `caterva2`: the Caterva2 dialect python-blosc2 speaks.

`service.Subscriber` puts them together. Importing the package loads none of
them, so that commands that use one part (``catmqtt user`` the accounts)
start quickly.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .service import Subscriber

__all__ = ["Subscriber", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "Subscriber":
        from .service import Subscriber

        return Subscriber
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'catmqtt.subscriber' has no attribute {name!r}")
