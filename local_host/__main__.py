"""Entry point: ``python -m local_host start|worker``."""

import sys

from local_host.cli import main

sys.exit(main())
