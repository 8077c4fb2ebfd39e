"""``python -m crosslevel`` is the ``crosslevel`` command."""

import sys

from .cli import main

sys.exit(main())
