"""``python -m ratio_search.cli``: the same as the ``ratio-search`` command."""

from . import run

run()
