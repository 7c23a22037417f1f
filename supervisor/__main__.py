"""``python -m supervisor``: the same as the ``adk-supervisor`` command."""

import sys

from .cli import main

sys.exit(main())
