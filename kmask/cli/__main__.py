"""``python -m kmask.cli``: the ``kmask`` command."""

import sys

from kmask.cli import main

sys.exit(main())
