"""``python -m ferrolab``: the same as the ``ferrolab`` command."""

import sys

from .cli import main

sys.exit(main())
