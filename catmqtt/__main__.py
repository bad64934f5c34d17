"""Run the ``catmqtt`` command as ``python -m catmqtt``."""

import sys

from .cli import main

sys.exit(main())
