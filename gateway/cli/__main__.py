"""``python -m gateway.cli``: the ``satgw`` command without the console script."""

import sys

from gateway.cli import main

sys.exit(main())
