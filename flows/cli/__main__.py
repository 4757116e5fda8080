"""``python -m flows.cli``: the ``magic141`` command."""

import sys

from flows.cli import main

sys.exit(main())
