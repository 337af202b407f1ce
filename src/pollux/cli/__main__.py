"""``python -m pollux.cli``: the ``pollux`` command."""

import sys

from . import main

sys.exit(main())
