"""This package holds the publisher: the service that scans one root and announces
it on MQTT (:mod:`.service`), the Flask app serving its chunks (:mod:`.app`), and
the kinds of root (:mod:`.roots`)."""

from .app import create_app
from .service import Publisher

__all__ = ["Publisher", "create_app"]
