"""``python -m ratio_search.cli``: the same as the ``ratio-search`` command."""

import sys

from . import main

sys.exit(main())
