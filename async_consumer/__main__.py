"""``python -m async_consumer`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
